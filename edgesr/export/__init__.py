"""Export: trained models as verified runtime artifacts, and the predictors that run them.

``onnx.export_onnx`` writes an ONNX file whose inputs and outputs carry the names of the model's
:class:`edgesr.spec.ModelSpec` (dynamic or fixed shapes; FFTs as the DFT op or as matrix products;
unrolled loops as ONNX ``Loop``); ``build.export_model`` turns it into one artifact folder per precision
of a target profile (``targets``), verified against PyTorch (``verify``) and described by a
``manifest`` that is checked whenever the folder is opened (``artifact.open_artifact``). The runtimes:
``onnxruntime``, ``openvino``, ``tensorrt`` (engines built where the ``tensorrt`` package imports) and
``torch_artifact`` (safetensors under autocast). They are imported only by the functions that use them,
so importing this package costs nothing.
"""
