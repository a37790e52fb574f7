"""Settings checked against the base model before any method runs, so a bad recipe fails in seconds with
a message naming the key (pydantic already refuses what needs no model: sparsity outside (0, 1), an
unknown scheme)."""

from __future__ import annotations

from pathlib import Path


class CompressInputError(ValueError):
    """Settings that cannot work with this base model; `problems` names each key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def base_shape(folder: str) -> dict:
    """The Llama-style dimensions a method's settings are checked against."""
    from transformers import AutoConfig

    if not Path(folder, "config.json").is_file():
        raise CompressInputError(
            [f"compress.base: {folder} is not a Hugging Face model folder (no config.json)"]
        )
    c = AutoConfig.from_pretrained(folder)
    if getattr(c, "quantization_config", None):
        raise CompressInputError([f"compress.base: {folder} is already quantized; compress a float model"])
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    if c.model_type not in ("llama", "mistral", "qwen2") or any(not hasattr(c, k) for k in need):
        raise CompressInputError(
            [
                f"compress.base: {folder} is a {c.model_type!r} model; "
                "compression supports Llama-style decoders"
            ]
        )
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    return {
        "hidden": c.hidden_size,
        "layers": c.num_hidden_layers,
        "heads": heads,
        "kv_heads": kv,
        "head_dim": getattr(c, "head_dim", None) or c.hidden_size // heads,
        "intermediate": c.intermediate_size,
    }


def check_methods(methods, shape: dict) -> None:
    """Refuse every method whose settings do not fit the base model, all problems at once."""
    problems: list[str] = []
    for i, m in enumerate(methods):
        key = f"compress.methods[{i}] ({m.method})"
        if m.method == "quantize" and m.scheme == "W4A16":
            widths = sorted({shape["hidden"], shape["intermediate"], shape["heads"] * shape["head_dim"]})
            bad = [w for w in widths if w % m.group_size]
            if bad:
                ok = [g for g in (32, 64, 128, 192, 256) if all(w % g == 0 for w in widths)]
                problems.append(
                    f"{key}: group_size {m.group_size} does not divide the layer input width(s) {bad}; "
                    f"valid here: {ok or 'none of 32..256'}"
                )
        elif m.method == "prune_structured":
            per_group = shape["heads"] // shape["kv_heads"]
            if m.heads_per_group >= per_group:
                problems.append(
                    f"{key}: heads_per_group={m.heads_per_group} would prune every head of a group: each of "
                    f"the {shape['kv_heads']} key/value groups has {per_group} query head(s); at most "
                    f"{per_group - 1} can go"
                )
            if m.drop_layers >= shape["layers"]:
                problems.append(
                    f"{key}: drop_layers={m.drop_layers} would remove every layer "
                    f"(the model has {shape['layers']})"
                )
            if m.mlp_fraction and int(shape["intermediate"] * (1 - m.mlp_fraction)) < 8:
                problems.append(f"{key}: mlp_fraction={m.mlp_fraction} keeps fewer than 8 MLP channels")
        elif m.method == "distill" and m.student_layers >= shape["layers"]:
            problems.append(
                f"{key}: student_layers={m.student_layers} is not fewer than the teacher's "
                f"{shape['layers']} layers"
            )
        elif m.method == "weight_share" and m.group_size > shape["layers"]:
            problems.append(
                f"{key}: group_size={m.group_size} is larger than the model's {shape['layers']} layers"
            )
        elif m.method == "layer_drop":
            if m.drop_layers >= shape["layers"]:
                problems.append(
                    f"{key}: drop_layers={m.drop_layers} would remove every layer "
                    f"(the model has {shape['layers']})"
                )
            bad = [i for i in (m.layers or []) if not 0 <= i < shape["layers"]]
            if bad:
                problems.append(
                    f"{key}: layers {bad} do not exist (the model has layers 0..{shape['layers'] - 1})"
                )
        elif m.method == "low_rank" and m.rank is not None:
            dims = {
                "q_proj": (shape["heads"] * shape["head_dim"], shape["hidden"]),
                "k_proj": (shape["kv_heads"] * shape["head_dim"], shape["hidden"]),
                "v_proj": (shape["kv_heads"] * shape["head_dim"], shape["hidden"]),
                "o_proj": (shape["hidden"], shape["heads"] * shape["head_dim"]),
                "gate_proj": (shape["intermediate"], shape["hidden"]),
                "up_proj": (shape["intermediate"], shape["hidden"]),
                "down_proj": (shape["hidden"], shape["intermediate"]),
            }
            for t in m.targets:
                leaf = t.rsplit(".", 1)[-1]
                if leaf not in dims:
                    problems.append(
                        f"{key}: target {t!r} is not a linear layer of a Llama block ({', '.join(dims)})"
                    )
                elif m.rank > min(dims[leaf]):
                    problems.append(
                        f"{key}: rank {m.rank} is larger than layer {leaf} allows "
                        f"(shape {dims[leaf][0]}x{dims[leaf][1]}: rank at most {min(dims[leaf])})"
                    )
    if problems:
        raise CompressInputError(problems)
