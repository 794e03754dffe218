"""What a webhook receives for a notification: its event type (`job.failed`, ...) and the
JSON body, built once when the notification is written (every attempt of a delivery sends
the same bytes). Pure."""

from __future__ import annotations

import datetime as dt
import json
import uuid

from aivera.training.v1 import notifications_pb2

N = notifications_pb2

EVENT_TYPES: dict[int, str] = {
    N.NOTIFICATION_KIND_JOB_SUCCEEDED: "job.succeeded",
    N.NOTIFICATION_KIND_JOB_FAILED: "job.failed",
    N.NOTIFICATION_KIND_JOB_CANCELLED: "job.cancelled",
    N.NOTIFICATION_KIND_DATASET_READY: "dataset.ready",
    N.NOTIFICATION_KIND_DATASET_FAILED: "dataset.failed",
    N.NOTIFICATION_KIND_MODEL_DELETED: "model.deleted",
}


def event_type(kind: int) -> str:
    return EVENT_TYPES.get(kind, "notification")


def body(
    *,
    notification_id: uuid.UUID,
    kind: int,
    title: str,
    text: str,
    job_id: str,
    dataset_id: str,
    model_id: str,
    clone_id: str,
    at: dt.datetime,
) -> str:
    """The delivery body: `{"type", "timestamp", "data"}` (Standard Webhooks' shape)."""
    data = {
        "notification_id": str(notification_id),
        "title": title,
        "body": text,
        "job_id": job_id,
        "dataset_id": dataset_id,
        "model_id": model_id,
        "clone_id": clone_id,
    }
    return json.dumps(
        {
            "type": event_type(kind),
            "timestamp": at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "data": {k: v for k, v in data.items() if v},
        },
        separators=(",", ":"),
    )
