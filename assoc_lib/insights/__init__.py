"""Insights for analysts: frequently-bought-together tables, category prediction from embeddings, and the
HTML report. Depends on ``assoc_lib.models`` and below."""
