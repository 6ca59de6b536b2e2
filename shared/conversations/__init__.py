"""Two-way flows: "Send a message and wait for a reply" (SendMessageAndWaitForReply) and its
status URL (GetQuestionStatus).

One layer above the feature packages, beside :mod:`shared.notify`, because it composes them: a
question is a record of the message core (:class:`~shared.messages.QuestionStore`) whose message
goes out through the one send path (:class:`~shared.outbound.SendService`); the inbound processor
ends it with the reply or STOP (``shared/inbound/_answers.py``). See ``docs/flows.md``.
"""

from shared.conversations._ask import AskService
from shared.conversations._inputs import AskBody, AskInput

__all__ = ["AskBody", "AskInput", "AskService"]
