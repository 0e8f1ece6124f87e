"""One model load at a time in a process.

Loading with transformers is not thread-safe: while a model is built it swaps torch's tensor constructors for
meta-device ones process-wide, so two models loading at once on two engine threads (several chat models, or a
chat and an embedding model, in one worker) can leave one with meta tensors ("Cannot copy out of meta
tensor"). Every local load holds this lock; loads run one after another, requests wait for /readyz as before.
"""

from __future__ import annotations

from ..generation.native import native_lock

LOAD_LOCK = native_lock()
