"""Request and response bodies of the HTTP API (they are also its OpenAPI schema).

The responses live in ``worker.contract`` (shared with ``worker.client``); the request is
``worker.jobs.params.JobInput`` itself, so the HTTP API and ``worker.enqueue`` accept and refuse
exactly the same requests.
"""

from __future__ import annotations

from imagegen.worker.contract import ErrorBody, JobCreated, JobPage, Problem, ValidationErrorBody
from imagegen.worker.jobs.params import JobInput

JobIn = JobInput

__all__ = ["ErrorBody", "JobCreated", "JobIn", "JobPage", "Problem", "ValidationErrorBody"]
