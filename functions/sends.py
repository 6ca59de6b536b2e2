"""The send actions, GetMessageStatus and CancelMessage as HTTP functions.

Each only hands the request to :func:`functions.actions.serve` (the shared pipeline). The send
actions and CancelMessage need the function key; GetMessageStatus is anonymous at the Functions
level because its URL (a send's ``Location``) carries its own HMAC token, checked by the action.
"""

from __future__ import annotations

import azure.functions as func

from functions.actions import serve

bp = func.Blueprint()
FUNCTION = func.AuthLevel.FUNCTION


@bp.function_name("SendMessage")
@bp.route(route="messages", methods=["POST"], auth_level=FUNCTION)
def send_message(req: func.HttpRequest) -> func.HttpResponse:
    return serve("SendMessage", req)


@bp.function_name("SendReplyMessage")
@bp.route(route="messages/{ParentMessageId}/replies", methods=["POST"], auth_level=FUNCTION)
def send_reply_message(req: func.HttpRequest) -> func.HttpResponse:
    return serve("SendReplyMessage", req)


@bp.function_name("SendDiscussionReplyMessage")
@bp.route(route="discussions/replies", methods=["POST"], auth_level=FUNCTION)
def send_discussion_reply_message(req: func.HttpRequest) -> func.HttpResponse:
    return serve("SendDiscussionReplyMessage", req)


@bp.function_name("SendWhatsappTemplateMessage")
@bp.route(route="whatsapp/messages", methods=["POST"], auth_level=FUNCTION)
def send_whatsapp_template_message(req: func.HttpRequest) -> func.HttpResponse:
    return serve("SendWhatsappTemplateMessage", req)


@bp.function_name("SendBulkMessages")
@bp.route(route="messages/bulk", methods=["POST"], auth_level=FUNCTION)
def send_bulk_messages(req: func.HttpRequest) -> func.HttpResponse:
    return serve("SendBulkMessages", req)


@bp.function_name("GetBulkStatus")
@bp.route(route="messages/bulk/{BatchId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def get_bulk_status(req: func.HttpRequest) -> func.HttpResponse:
    return serve("GetBulkStatus", req)


@bp.function_name("GetMessageStatus")
@bp.route(route="messages/{MessageId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def get_message_status(req: func.HttpRequest) -> func.HttpResponse:
    return serve("GetMessageStatus", req)


@bp.function_name("CancelMessage")
@bp.route(route="messages/{MessageId}", methods=["DELETE"], auth_level=FUNCTION)
def cancel_message(req: func.HttpRequest) -> func.HttpResponse:
    return serve("CancelMessage", req)


@bp.function_name("SendMessageAndWaitForReply")
@bp.route(route="questions", methods=["POST"], auth_level=FUNCTION)
def send_message_and_wait_for_reply(req: func.HttpRequest) -> func.HttpResponse:
    return serve("SendMessageAndWaitForReply", req)


@bp.function_name("GetQuestionStatus")
@bp.route(route="questions/{QuestionId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def get_question_status(req: func.HttpRequest) -> func.HttpResponse:
    return serve("GetQuestionStatus", req)
