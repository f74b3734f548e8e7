"""Names and defaults shared across imagegen, documented in one place."""

from __future__ import annotations

DEFAULT_MODEL = "openai/gpt-image-2"
DEFAULT_EDIT_MODEL = "openai/gpt-image-2/edit"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "sqlite:///imagegen.db"
#: fal's production queue host, as fal-client spells it when FAL_QUEUE_RUN_HOST is unset.
FAL_PRODUCTION_QUEUE_HOST = "queue.fal.run"

#: The two stages of the generation path (worker.jobs): send to fal, then read fal's answer.
SUBMIT_TASK = "imagegen.submit"
COLLECT_TASK = "imagegen.collect"
STORE_TASK = "imagegen.store"
#: The beat task that re-publishes jobs whose broker message was lost.
SWEEP_TASK = "imagegen.sweep"
PURGE_TASK = "imagegen.purge"
COOLDOWN_TASK = "imagegen.cooldown"
#: how often beat runs the retention purge (when a retention is set)
PURGE_INTERVAL_S = 86_400.0
CALLBACK_TASK = "imagegen.callback"
#: Celery queues: generations, and job-event callbacks to web apps (their own lane).
JOB_QUEUE = "imagegen"
CALLBACK_QUEUE = "imagegen.callbacks"
#: jobs under way (collects, stores, submits granted a fal slot): not behind a backlog of
#: new submits, as Redis hands a worker its queues' messages in turn
NEXT_QUEUE = "imagegen.next"

#: Redis key set while fal reports the account locked (403 "User is locked"); value: reason.
ACCOUNT_LOCK_KEY = "imagegen:fal:account-locked"

#: Fleet-wide fal limits (worker/fal/limits.py): a cool-down after a 429 and the in-flight slots.
FAL_COOLDOWN_KEY = "imagegen:fal:cooldown-until"
FAL_SLOTS_KEY = "imagegen:fal:slots"
#: set while jobs wait for a slot: a new submit then waits too, the granter picks fairly
FAL_WAITING_KEY = "imagegen:fal:waiting"

#: fal's error type for a content-policy refusal, in every shape it comes in.
CONTENT_POLICY = "content_policy_violation"
#: Refusal categories fal treats as a soft block: the user may resubmit with new intent.
SOFT_BLOCK_CATEGORIES = frozenset({"trademark_ip"})
#: Used when fal refuses without naming a category.
UNSPECIFIED_CATEGORY = "unspecified"

#: GPT Image 2 inputs (see fal's model page).
IMAGE_SIZE_PRESETS = (
    "square_hd",
    "square",
    "portrait_4_3",
    "portrait_16_9",
    "landscape_4_3",
    "landscape_16_9",
)
QUALITIES = ("auto", "low", "medium", "high")
OUTPUT_FORMATS = ("jpeg", "png", "webp")
MAX_EDGE_PX = 3840
MAX_ASPECT_RATIO = 3.0
SIZE_MULTIPLE_PX = 16
MAX_NUM_IMAGES = 4
MAX_PROMPT_CHARS = 32_000
MAX_IDEMPOTENCY_KEY_CHARS = 200
#: fal's bounds on a custom image_size's total pixels (1024x640 to 3840x2160).
MIN_PIXELS = 655_360
MAX_PIXELS = 8_294_400
#: The longest a job may be given to finish (deadline_s), and a callback URL's length.
MAX_DEADLINE_S = 7 * 24 * 3600
MAX_CALLBACK_URL_CHARS = 2000
#: an input image URL (presigned URLs carry long query strings)
MAX_INPUT_URL_CHARS = 8000

#: fal's public keys for webhook signatures (IMAGEGEN_FAL_JWKS_URL overrides it).
FAL_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
