"""Export: a core checkpoint to ONNX variants and a Triton model repository.

``cxr-msn export CHECKPOINT --out model_repository`` writes fp32, fp16 and int8 ONNX
models, their Triton configurations (CPU, and GPU with TensorRT at FP16), a
python-backend twin for CPU hosts without Triton's onnxruntime backend, and the
manifest (``cxrmsn.repository``) that serving trusts. ``cxr-msn import-weights``
brings foreign ViT weights (the paper's Lightning checkpoints, facebookresearch/msn,
timm) into the core checkpoint format. Needs the ``train`` extra and onnxruntime.
Never imports ``training`` or ``serving``.
"""
