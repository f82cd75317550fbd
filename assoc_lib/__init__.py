"""basket-association: learn which products go together, serve them over TF Serving gRPC."""

__version__ = "0.1.0"
