"""The simulator's stand-in for a tokenizer.

Prompt text counts as ``ceil(characters / 4)`` tokens (about right for English with BPE
tokenizers); a chat adds :data:`CHAT_TOKENS_PER_MESSAGE` per message for the template and
:data:`CHAT_REPLY_PRIMING_TOKENS` for the assistant turn. A prompt given as token ids counts its
ids. Generated text is a fixed, seeded sequence of three-letter words, one word per token, each
after the first preceded by a space, so every token but the first is four characters and the
output fed back as a prompt counts about the same number of tokens.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

CHARS_PER_TOKEN = 4
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_REPLY_PRIMING_TOKENS = 3

_WORD_LIST = (
    "the and for are but not you all any can had her was one our out day get has him his how "
    "man new now old see two way who boy did its let put say she too use art bay bed big box "
    "car cat cup cut dog ear eat egg end eye far fat few fit fly fun gas gun hat hot ice ink "
    "job joy key kid lab law leg lip log low map mix mud net oak oil own pan pen pet pie pig "
    "pin pot raw red row run sad sea set sit sky sun tap tea ten tie tip top toy van war web "
    "wet win yes zoo"
)
_WORDS = tuple(_WORD_LIST.split())


def count_text_tokens(text: str) -> int:
    """Tokens in a piece of prompt text: ``ceil(len(text) / 4)``."""
    return -(-len(text) // CHARS_PER_TOKEN)


def _content_text(content: Any) -> str:
    """The text of a chat message's ``content`` (a string, or a list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


def render_chat(messages: Sequence[dict[str, Any]], tools: Any = None) -> tuple[str, int]:
    """A stand-in for the chat template: the rendered text and its token count."""
    pieces: list[str] = []
    tokens = CHAT_REPLY_PRIMING_TOKENS
    for message in messages:
        text = _content_text(message.get("content"))
        for call in message.get("tool_calls") or ():
            text += json.dumps(call, sort_keys=True)
        pieces.append(f"<|{message.get('role', '')}|>{text}")
        tokens += CHAT_TOKENS_PER_MESSAGE + count_text_tokens(text)
    if tools:
        tool_text = json.dumps(tools, sort_keys=True)
        pieces.insert(0, tool_text)
        tokens += count_text_tokens(tool_text)
    return "".join(pieces), tokens


def block_hashes(text: str, num_tokens: int, block_size: int) -> tuple[int, ...]:
    """Chained hashes of the prompt's full KV blocks, for the simulated prefix cache.

    A block is ``block_size`` tokens, that is ``4 * block_size`` characters of the rendered
    prompt; a block's hash covers every block before it, as in vLLM's prefix cache.
    """
    width = block_size * CHARS_PER_TOKEN
    count = min(num_tokens // block_size, len(text) // width)
    hashes: list[int] = []
    parent = 0
    for index in range(count):
        parent = hash((parent, text[index * width : (index + 1) * width]))
        hashes.append(parent)
    return tuple(hashes)


def token_id_block_hashes(token_ids: Sequence[int], block_size: int) -> tuple[int, ...]:
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[start : start + block_size])))
        hashes.append(parent)
    return tuple(hashes)


class FillerText:
    """Deterministic generated text: token ``i`` is always the same word for a given seed."""

    def __init__(self, seed: int) -> None:
        words = list(_WORDS)
        random.Random(seed).shuffle(words)
        self._words = tuple(words)

    def tokens(self, start: int, stop: int, offset: int = 0) -> str:
        """The text of generated tokens ``start`` (inclusive) to ``stop`` (exclusive)."""
        words = self._words
        size = len(words)
        out = [(" " if i else "") + words[(i + offset) % size] for i in range(start, stop)]
        return "".join(out)
