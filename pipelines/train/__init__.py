"""Training: pretraining objectives, the DeepSpeed config builder, the Ray Train worker loop and the
pretrain stage (`pipelines.train.stage.run_pretrain`). See docs/pretrain.md."""
