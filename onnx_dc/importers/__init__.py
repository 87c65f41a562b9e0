"""Importers: models of other frameworks as ONNX models that onnx_dc compresses.

:mod:`onnx_dc.importers.caffe` converts a Caffe prototxt + caffemodel (and writes the
``CmpConvolution`` / ``CmpInnerProduct`` settings as a config); its schema is in
:mod:`onnx_dc.importers.caffe_schema`. Importers never import onnxruntime.
"""
