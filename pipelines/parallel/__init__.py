"""3D parallelism (data x pipeline x tensor) for training: the layout and its process groups
(`layout.py`), the decoder as a DeepSpeed pipeline (`pipeline.py`), tensor parallelism as a DTensor pass
(`tensor.py`), one training step under any layout (`trainer.py`), the Ray Train worker (`loop.py`) and a
spawn harness for tests and benchmarks (`harness.py`). See docs/parallel.md."""
