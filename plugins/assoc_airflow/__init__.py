"""Airflow adapters for basket-association: config from DAG params, GE operator, DVC and TF Serving hooks.

Airflow puts plugins/ on sys.path, so DAGs import ``assoc_airflow``. The work itself lives in
``assoc_lib``, which never imports Airflow.
"""
