from keel.server.routes import inference, operations

__all__ = ["inference", "operations"]
