"""The message core: a message's records, their statuses and transitions, and their one writer.

Every row of ``SmartDialogMessages`` (records and recipient slots), ``SmartDialogPacks`` (packs
and the pack index) and ``SmartDialogIdempotency`` is a typed record here, written only by the
stores here. A status change goes through its transition table (:mod:`shared.messages._models`);
an arrow the table does not have raises :class:`IllegalTransition`.

It imports no feature package (outbound, inbound, actions): both sides build on it.
"""

from shared.messages._batches import BatchRecord, BatchStore
from shared.messages._idempotency import IdempotencyEntry, IdempotencyStore, idempotency_key_hash
from shared.messages._models import (
    BATCH_TRANSITIONS,
    MESSAGE_ID_PATTERN,
    MESSAGE_TRANSITIONS,
    BatchStatus,
    FailureFieldError,
    FailureInfo,
    IllegalTransition,
    MessageStatus,
    Operation,
    RecipientStatus,
    check_batch_transition,
    check_transition,
)
from shared.messages._packs import (
    IndexEntry,
    Pack,
    PackMember,
    PackStore,
    index_row_key,
    is_pack_id,
    new_pack_id,
)
from shared.messages._questions import (
    ANSWER_GRACE,
    QUESTION_TRANSITIONS,
    UNSENT,
    QuestionConflict,
    QuestionRecord,
    QuestionStatus,
    QuestionStore,
    check_question_transition,
    match_answer,
    new_question_id,
    normalize_answer,
    normalize_reply,
    reprompt_message_id,
    reprompted_question,
    send_ended_unsent,
    send_may_have_gone_out,
)
from shared.messages._records import (
    BATCH_PARTITION_ROWS,
    DamagedRecordError,
    MessageRecord,
    RecipientSlot,
    batch_filter,
    effective_status,
    in_lane,
    lane_message_id,
    lane_partition,
    lane_time,
    message_keys,
    text_connection,
)
from shared.messages._store import MessageStore

__all__ = [
    "ANSWER_GRACE",
    "BATCH_PARTITION_ROWS",
    "BATCH_TRANSITIONS",
    "MESSAGE_ID_PATTERN",
    "MESSAGE_TRANSITIONS",
    "QUESTION_TRANSITIONS",
    "UNSENT",
    "BatchRecord",
    "BatchStatus",
    "BatchStore",
    "DamagedRecordError",
    "FailureFieldError",
    "FailureInfo",
    "IdempotencyEntry",
    "IdempotencyStore",
    "IllegalTransition",
    "IndexEntry",
    "MessageRecord",
    "MessageStatus",
    "MessageStore",
    "Operation",
    "Pack",
    "PackMember",
    "PackStore",
    "QuestionConflict",
    "QuestionRecord",
    "QuestionStatus",
    "QuestionStore",
    "RecipientSlot",
    "RecipientStatus",
    "batch_filter",
    "check_batch_transition",
    "check_question_transition",
    "check_transition",
    "effective_status",
    "idempotency_key_hash",
    "in_lane",
    "index_row_key",
    "is_pack_id",
    "lane_message_id",
    "lane_partition",
    "lane_time",
    "match_answer",
    "message_keys",
    "new_pack_id",
    "new_question_id",
    "normalize_answer",
    "normalize_reply",
    "reprompt_message_id",
    "reprompted_question",
    "send_ended_unsent",
    "send_may_have_gone_out",
    "text_connection",
]
