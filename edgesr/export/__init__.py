"""Export: trained models as runtime graphs (ONNX), and the runtime predictors that run them.

``edgesr.export.onnx.export_onnx`` writes a verified-loadable ONNX file whose inputs and outputs carry
the names of the model's :class:`edgesr.spec.ModelSpec`; ``edgesr.export.onnxruntime.OnnxRuntimePredictor``
runs such a file as a *predictor* (named input tensors in, the output tensor out), interchangeable with
the torch module. The runtimes (onnx, onnxscript, onnxruntime: the ``export`` extra) are imported only
by the functions that use them, so importing this package costs nothing.
"""
