"""Queue trigger on ``smartdialog-outbound``: hands each message to the outbound sender.

It returns normally for everything a message or SmartDialog can cause (re-enqueues with a
visibility delay, dead letters and failures are the sender's business); only a failure of our
own storage raises, so the host retries and, after ``maxDequeueCount``, moves the message to
``smartdialog-outbound-poison``. While the settings do not validate, the message is put back on
the queue (``shared.unconfigured``), as in every queue trigger.
"""

import azure.functions as func

from shared.names import OUTBOUND_QUEUE

bp = func.Blueprint()


@bp.function_name("OutboundSender")
@bp.queue_trigger(arg_name="msg", queue_name=OUTBOUND_QUEUE, connection="AzureWebJobsStorage")
def outbound_sender(msg: func.QueueMessage) -> None:
    """Send one queued message (see ``shared.outbound``)."""
    from shared.outbound import OutboundSender, held_copy
    from shared.unconfigured import kept_while_unconfigured

    text = msg.get_body().decode("utf-8", errors="replace")
    with kept_while_unconfigured(OUTBOUND_QUEUE, text, lambda: held_copy(text, msg.id)):
        OutboundSender.from_settings().process(
            text,
            queue_message_id=msg.id,
            dequeue_count=msg.dequeue_count,
            inserted_at=msg.insertion_time,
        )
