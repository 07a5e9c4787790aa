"""Version pins shared by the runtime image, the operator and the vLLM contract tests.

``VLLM_VERSION`` is the single pin for vLLM: the runtime image's base tag
(``vllm/vllm-openai:v<VLLM_VERSION>`` in ``runtime/Dockerfile``) and the contract tests' isolated
virtualenv (``vllm==<VLLM_VERSION>``) both follow it; a unit test keeps the Dockerfile in step.
"""

from __future__ import annotations

VLLM_VERSION = "0.33.0"
