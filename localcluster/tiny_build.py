"""Build one tiny, randomly initialised checkpoint offline: ``python tiny_build.py FAMILY OUT``.

Run by the CPU vLLM virtualenv's Python (see :mod:`localcluster.tiny_models`), never by the
project's: it needs torch, safetensors, tokenizers, transformers, tiktoken and openai_harmony,
all installed with vLLM, and imports them with ``importlib`` so this file type-checks without
them. Nothing is downloaded.

Families (what vLLM must run for the catalog's architectures):

``qwen3``
    ``Qwen3ForCausalLM``: dense, grouped-query attention. Byte-level BPE tokenizer trained here
    on a generated corpus, a ChatML chat template.
``gpt-oss``
    ``GptOssForCausalLM`` from ``tests/data/models/gpt-oss-20b/config.json`` with tiny sizes:
    sliding and full attention layers alternating, attention sinks, a mixture of experts,
    BF16 (no MXFP4: the CPU build has no MXFP4 kernels), the full 201,088-token vocabulary.
    Tokenizer: the o200k vocabulary and harmony special tokens, taken from the installed
    ``openai_harmony`` (which carries them), written as ``o200k_base.tiktoken`` (checked
    against its published sha256) and converted to a Hugging Face ``tokenizer.json``.

Every checkpoint is sharded (``model-0000i-of-0000n.safetensors`` with a
``model.safetensors.index.json``) and gets ``SHA256SUMS`` (``<hex>  <file>`` per file) like a
real release.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GPT_OSS_CONFIG = ROOT / "tests" / "data" / "models" / "gpt-oss-20b" / "config.json"
O200K_FILE = "o200k_base.tiktoken"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
#: The URL tiktoken's o200k_base loader reads; its cache file is named by this URL's sha1.
O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
MANIFEST = "SHA256SUMS"
#: o200k_base's byte-pair tokens; gpt-oss's special tokens follow them up to the vocabulary size.
O200K_MERGEABLE = 199998
VOCAB_SIZE = 201088
SEED = 20261203

QWEN3_TEXT = (
    "the model serves tokens to every user of the cluster while the operator plans gpus "
    "replicas scale up and down with the queue a request waits runs and finishes fast slow "
    "weights load from the volume offline no network is needed hello world kubernetes pod "
    "node gantry vllm cache block prefix memory tensor parallel pipeline expert attention"
)

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _mod(name: str) -> Any:
    return importlib.import_module(name)


def _save(model: Any, out: Path, shard: str) -> None:
    model.save_pretrained(str(out), max_shard_size=shard, safe_serialization=True)
    if not (out / "model.safetensors.index.json").exists():
        raise SystemExit(f"expected a sharded checkpoint in {out}; lower the shard size")


def build_qwen3(out: Path) -> None:
    tokenizers = _mod("tokenizers")
    transformers = _mod("transformers")
    torch = _mod("torch")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=specials,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = QWEN3_TEXT.split()
    corpus = [
        " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) + "." for i in range(400)
    ]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )
    fast.chat_template = CHATML
    fast.save_pretrained(str(out))
    vocab = 1024 + 0  # the trainer fills the vocabulary exactly
    config = transformers.Qwen3Config(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
        bos_token_id=None,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(SEED)
    model = transformers.Qwen3ForCausalLM(config).to(torch.bfloat16)
    _save(model, out, "100KB")


def _o200k_from_harmony(out: Path) -> tuple[dict[bytes, int], dict[str, int]]:
    """o200k's mergeable ranks and harmony's special tokens, from the installed openai_harmony;
    writes ``o200k_base.tiktoken`` (base64 of each token's bytes, then its rank)."""
    harmony = _mod("openai_harmony")
    encoding = harmony.load_harmony_encoding(harmony.HarmonyEncodingName.HARMONY_GPT_OSS)
    ranks: dict[bytes, int] = {}
    for rank in range(O200K_MERGEABLE):
        ranks[bytes(encoding._inner.decode_bytes([rank]))] = rank
    if len(ranks) != O200K_MERGEABLE:
        raise SystemExit("harmony's o200k vocabulary has duplicate tokens: not o200k_base")
    specials = {str(encoding.decode([t])): t for t in range(O200K_MERGEABLE, VOCAB_SIZE)}
    if not all(encoding.is_special_token(t) for t in specials.values()):
        raise SystemExit(f"harmony's tokens {O200K_MERGEABLE}.. are not all special tokens")
    lines = [f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()]
    path = out / O200K_FILE
    path.write_text("".join(lines), encoding="ascii")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != O200K_SHA256:
        raise SystemExit(f"rebuilt {O200K_FILE} has sha256 {digest}, expected {O200K_SHA256}")
    return ranks, specials


def build_gpt_oss(out: Path) -> None:
    transformers = _mod("transformers")
    torch = _mod("torch")
    tiktoken = _mod("tiktoken")
    _ranks, specials = _o200k_from_harmony(out)
    # tiktoken's own o200k_base definition (its regex), fed the rebuilt file via its cache.
    cache = out / ".tiktoken-cache"
    cache.mkdir()
    name = hashlib.sha1(O200K_URL.encode()).hexdigest()
    (cache / name).write_bytes((out / O200K_FILE).read_bytes())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    base = tiktoken.get_encoding("o200k_base")
    converter = _mod("transformers.convert_slow_tokenizer").TikTokenConverter(
        vocab_file=str(out / O200K_FILE),
        pattern=base._pat_str,
        extra_special_tokens=dict(sorted(specials.items(), key=lambda item: item[1])),
    )
    converter.converted().save(str(out / "tokenizer.json"))
    for leftover in cache.iterdir():
        leftover.unlink()
    cache.rmdir()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(out / "tokenizer.json"),
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
    )
    fast.save_pretrained(str(out))
    tokenizer = fast.backend_tokenizer
    for text, token_id in specials.items():
        if tokenizer.token_to_id(text) != token_id:
            raise SystemExit(f"tokenizer.json gives {text} id {tokenizer.token_to_id(text)}")
    data = json.loads(GPT_OSS_CONFIG.read_text())
    data.pop("quantization_config", None)
    data.update(
        {
            "num_hidden_layers": 2,
            "layer_types": ["sliding_attention", "full_attention"],
            "hidden_size": 128,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "experts_per_token": 2,
            "vocab_size": VOCAB_SIZE,
            "torch_dtype": "bfloat16",
        }
    )
    for key in ("architectures", "model_type", "transformers_version", "dtype"):
        data.pop(key, None)
    config = transformers.GptOssConfig(**data)
    config.architectures = ["GptOssForCausalLM"]
    torch.manual_seed(SEED)
    model = transformers.GptOssForCausalLM(config).to(torch.bfloat16)
    _save(model, out, "20MB")
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": 199998,
                "eos_token_id": [200002, 199999, 200012],
                "pad_token_id": 199999,
                "do_sample": True,
            },
            indent=2,
        )
        + "\n"
    )


def write_manifest(out: Path) -> None:
    lines = []
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(out).as_posix()}\n")
    (out / MANIFEST).write_text("".join(lines), encoding="ascii")


BUILDERS = {"qwen3": build_qwen3, "gpt-oss": build_gpt_oss}


def main(argv: list[str]) -> int:
    family, out = argv[0], Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    BUILDERS[family](out)
    write_manifest(out)
    print(json.dumps({"family": family, "dir": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
