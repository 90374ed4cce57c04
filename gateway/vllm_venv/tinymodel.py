"""Write a tiny random-weight Llama-style model that real vLLM can serve.

Tests run a real vLLM (CPU build) but cannot download models, so we make one:
a 2-layer, 128-wide Llama with a byte-level BPE tokenizer trained on the
Python standard library's own sources (always present, no download needed).
Its output is gibberish, but it exercises the whole serving path: tokenizer,
ChatML chat template, special tokens, FIM tokens, streaming, usage, metrics.

Usage (with the vLLM venv's python, which has torch/transformers/tokenizers):

    python gateway/vllm_venv/tinymodel.py OUTDIR [--seed N]

Only the standard library is imported at module level: the gateway package
must stay importable without torch, so the heavy imports live in functions.
"""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

# Qwen2.5's special tokens, in Qwen2.5's order, so prompts written for Qwen2.5
# (chat, FIM) tokenize the same way: each of these is ONE token, never split.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]

VOCAB_SIZE = 3000

# Stdlib modules used as training text. A fixed list (not a directory walk)
# keeps training fast (about 1 MB of text) and the tokenizer identical from
# run to run; missing files are skipped. The stdlib differs a little between
# Python versions, so the tokenizer is tied to the interpreter that ran this.
CORPUS_FILES = [
    "argparse.py", "ast.py", "collections/__init__.py", "dataclasses.py",
    "email/message.py", "enum.py", "functools.py", "inspect.py",
    "json/decoder.py", "json/encoder.py", "logging/__init__.py",
    "pathlib.py", "random.py", "shutil.py", "string.py", "subprocess.py",
    "textwrap.py", "typing.py", "unittest/case.py", "urllib/parse.py",
]

# ChatML as Qwen2.5 renders it, minus Qwen's default system prompt (a tiny
# model gains nothing from it, and shorter prompts keep token counts simple).
# Tools are listed inside the system turn exactly like Qwen2.5, so requests
# with `tools` render instead of crashing the template; assistant tool calls
# and `tool` results use Qwen2.5's <tool_call>/<tool_response> wrappers.
CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def _corpus() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for name in CORPUS_FILES:
        path = stdlib / name
        if path.is_file():
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    if not texts:  # should never happen, but fail loudly rather than train on nothing
        raise RuntimeError(f"no corpus files found under {stdlib}")
    return texts


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # Byte-level BPE (GPT-2/Qwen style): every byte is in the base alphabet,
    # so any text round-trips and nothing is ever <unk>.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,  # ids 0..8, registered as special added tokens
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def write_tiny_model(outdir: Path, seed: int = 0) -> None:
    """Write model + tokenizer to `outdir`; same seed gives the same weights."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep test logs clean

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        eos_token="<|im_end|>",  # chat turns end here, like Qwen2.5-Instruct
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=65536,
    )
    # save_jinja_files=False keeps the template inside tokenizer_config.json
    # (transformers 5 would otherwise write a separate chat_template.jinja).
    tokenizer.save_pretrained(outdir, save_jinja_files=False)

    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        # vLLM's ceiling for max_model_len. 65,536 is the 24 GB profile's agent window, which the
        # real tier's agents run in; the weights do not depend on it (rotary positions are computed).
        max_position_embeddings=65536,
        bos_token_id=None,  # no BOS, like Qwen2.5
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=True,  # fewer weights, smaller files
        dtype="float32",
    )
    torch.manual_seed(seed)  # the only source of randomness in the weights
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(outdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_tiny_model(args.outdir, args.seed)
    print(f"wrote tiny model to {args.outdir}")


if __name__ == "__main__":
    main()
