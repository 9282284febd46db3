"""The BentoML service and the torch-free prediction path it shares with ``cxr-msn predict``."""
