"""Idempotent order creation, safe under several worker processes.

Run it with every worker sharing one Redis:

    DIAGLOG_JOB_STORE=redis://127.0.0.1:6379/0 gunicorn -w 2 orders:app

A retry with the same ``Idempotency-Key`` gets the stored response back, whichever worker
answers it; the view does not run again. tests/test_orders_example.py runs this file so.
"""

import uuid
from dataclasses import dataclass

from flask import Flask, request

from flask_diaglog import DiagLog, guard_job

app = Flask(__name__)
DiagLog(app)


@dataclass
class Order:
    id: str
    item: str


def place_order(payload):
    """Your database goes here. Returns None for a payload that is not an order."""
    if not isinstance(payload, dict) or not isinstance(payload.get("item"), str):
        return None
    return Order(id=uuid.uuid4().hex[:12], item=payload["item"])


@app.post("/api/orders")
@guard_job(replay=True, required=True)
def create_order():
    order = place_order(request.get_json(silent=True))
    if order is None:
        return {"error": 'send a JSON object like {"item": "gpu"}'}, 400
    body = {"order": order.id, "item": order.item}
    return body, 201, {"Location": f"/api/orders/{order.id}"}
