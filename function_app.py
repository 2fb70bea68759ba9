"""Azure Functions bindings (Python v2 model). Triggers only: the work lives in the ``o365collector`` package.

- ``list_content``  (timer, schedule from the ``O365_LIST_SCHEDULE`` app setting): list new content
  for every tenant and content type, enqueue one message per blob, advance the checkpoints.
- ``list_tenant``   (queue ``%O365_LIST_QUEUE%``, with ``O365_LIST_FANOUT=true``): list one tenant's content
  types under per-stream leases, a bounded share of windows at a time (``o365collector.listing_queue``);
  the timer then only enqueues one such message per tenant.
- ``fetch_content`` (queue ``%O365_CONTENT_QUEUE%`` on the ``AzureWebJobsStorage`` connection):
  fetch one blob and ship its records; raising makes the host redeliver, and after
  ``maxDequeueCount`` (host.json) the message goes to the ``-poison`` queue.
- ``health``        (HTTP GET /api/health, function key): the ``status`` report as JSON; 200 when healthy,
  503 when offline, throttled beyond the threshold or losing data (for availability tests and uptime checkers).
- ``webhook``       (HTTP POST /api/webhook, function key): push mode's receiver for the API's notifications;
  200 only once every blob is on the queue (``o365collector.webhook``).

Each function takes the invocation ``context`` and runs inside ``invocation.tied(...)``: the worker forwards
a log record as the invocation's only from a thread that carries its id, and the package's threads (the
lister's pool, the content validators, lease heartbeats, sink compressors) get it from there.
"""

from __future__ import annotations

import azure.functions as func

from o365collector import invocation, listing_queue, runtime

app = func.FunctionApp()


@app.function_name(name="list_content")
@app.timer_trigger(arg_name="timer", schedule="%O365_LIST_SCHEDULE%", run_on_startup=False, use_monitor=True)
def list_content(timer: func.TimerRequest, context: func.Context) -> None:
    with invocation.tied(context.thread_local_storage, context.invocation_id):
        listing_queue.run_timer(past_due=timer.past_due)


@app.function_name(name="list_tenant")
@app.queue_trigger(arg_name="msg", queue_name="%O365_LIST_QUEUE%", connection="AzureWebJobsStorage")
def list_tenant(msg: func.QueueMessage, context: func.Context) -> None:
    with invocation.tied(context.thread_local_storage, context.invocation_id):
        listing_queue.run_list_message(
            body=msg.get_body(),
            message_id=msg.id or "",
            dequeue_count=msg.dequeue_count or 1,
        )


@app.function_name(name="fetch_content")
@app.queue_trigger(arg_name="msg", queue_name="%O365_CONTENT_QUEUE%", connection="AzureWebJobsStorage")
def fetch_content(msg: func.QueueMessage, context: func.Context) -> None:
    with invocation.tied(context.thread_local_storage, context.invocation_id):
        runtime.process_message(
            body=msg.get_body(),
            message_id=msg.id or "",
            dequeue_count=msg.dequeue_count or 1,
        )


@app.function_name(name="health")
@app.route(route="health", auth_level=func.AuthLevel.FUNCTION, methods=["GET"])
def health(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    with invocation.tied(context.thread_local_storage, context.invocation_id):
        status_code, body = runtime.health()
    return func.HttpResponse(
        body, status_code=status_code, mimetype="application/json", headers={"Cache-Control": "no-store"}
    )


@app.function_name(name="webhook")
@app.route(route="webhook", auth_level=func.AuthLevel.FUNCTION, methods=["POST"])
def webhook(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    with invocation.tied(context.thread_local_storage, context.invocation_id):
        status_code, body = runtime.webhook(dict(req.headers), req.get_body())
    return func.HttpResponse(
        body, status_code=status_code, mimetype="application/json", headers={"Cache-Control": "no-store"}
    )
