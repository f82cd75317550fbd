"""Serving: the SavedModel export, the atomic push to the model base path, the local TF Serving stand-in
(gRPC), its client, and the infra validation of an export. Depends on ``assoc_lib.models`` and below."""
