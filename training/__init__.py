"""Training: multimodal MSN pretraining of ViT encoders on chest X-rays with static EHR data.

Subpackages: ``training.msn`` (the method: views, masking, loss, EMA, heads, the EHR
branch), ``training.data`` (the manifest format, its builders, the image cache and the
pretraining data set). ``training.pretrain`` runs the loop; ``training.pretrain_command``
and ``training.manifest_command`` are the ``cxr-msn`` subcommands. Needs the ``train`` extra.
"""
