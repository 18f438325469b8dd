"""Inference backends behind one interface (`base.Backend`: load/close/run/run_bound/allocate):
ONNX Runtime (`ort.OrtBackend`) and native TensorRT engines (`trt.TrtBackend`, tensorrt imported
lazily)."""
