"""The multimodal MSN method: views, masking, loss, EMA target, projection head, EHR branch."""
