"""Passive mode through the real view: the reply travels in the callback's own response,
WeChat's deadline is held to, and every answer is handed over exactly once. The task's
side is the adapter's real send(); waits are shortened (quick_passive) in the same
proportions as WeChat's 5 s: wait 0.6 s for the answer, hold 0.9 s when it is late."""

from __future__ import annotations

import re
import threading
import time

import pytest
import redis as redis_lib

from channels_app.adapters.wechat_mp import passive
from channels_app.adapters.wechat_mp.adapter import WeChatMPAdapter
from channels_app.adapters.wechat_mp.passive import (
    CONTINUED,
    EARLIER_ANSWER,
    NOTE_BYTES,
    SEPARATOR,
    STILL_THINKING,
    PassiveOutbox,
    QueuedPart,
    question_snippet,
)
from channels_app.adapters.wechat_mp.tests.support import ACCOUNT, OPENID, creds, deliver, text_xml
from channels_app.errors import TransportError
from channels_app.message import OutboundReply
from channels_app.models import InboundMessage, MessageStatus
from channels_app.outbound import split_reply
from tests.fakes.wechat_mp import read_passive_reply

pytestmark = pytest.mark.usefixtures("quick_passive")
A, B, C = 24587610000000001, 24587610000000002, 24587610000000003
OTHER_USER = "oJ7Yt5Qm0sX2kP9aB3cD4eF6gXYZ"


@pytest.fixture
def bot(make_mp_bot):
    return make_mp_bot("safe")


def queue(bot, msgid: int, text: str, openid: str = OPENID, question: str = "", index: int = 0) -> None:
    """What the dialog task does with one reply part in passive mode: adapter.send()."""
    WeChatMPAdapter(bot).send(
        OutboundReply(
            chat_id=openid,
            chat_type="p2p",
            sender_id=openid,
            text=text,
            reply_context={"openid": openid, "msgid": str(msgid), "question": question},
            idempotency_key=f"sb-test-{msgid}-{index}",
        ),
        http=None,
    )


def answered(bot, msgid: int, text: str) -> InboundMessage:
    """The task's record of a finished answer: the text on the row, status replied."""
    row = InboundMessage.objects.get(bot=bot, platform_message_id=str(msgid))
    row.reply_text, row.status = text, MessageStatus.REPLIED
    row.save()
    return row


def queue_later(bot, seconds: float, msgid: int, text: str) -> threading.Timer:
    timer = threading.Timer(seconds, queue, args=(bot, msgid, text))
    timer.start()
    return timer


def content(delivery, mode: str = "safe") -> str:
    assert delivery.status == 200, delivery.body
    return read_passive_reply(creds(), delivery.body, encrypted=mode != "plain")["Content"]


def earlier(question: str) -> str:
    return EARLIER_ANSWER.format(question=question_snippet(question))


def passive_note(bot, msgid: int) -> dict:
    return InboundMessage.objects.get(bot=bot, platform_message_id=str(msgid)).raw.get("passive", {})


# -- in time ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "compatible", "safe"])
def test_an_answer_ready_in_time_is_the_callbacks_response(client, make_mp_bot, mode):
    bot = make_mp_bot(mode)
    queue(bot, A, "明天北京有小雨。")

    delivery = deliver(client, bot, mode, text_xml("明天北京会下雨吗？", A))

    fields = read_passive_reply(creds(), delivery.body, encrypted=mode != "plain")
    assert fields["Content"] == "明天北京有小雨。"
    assert (fields["ToUserName"], fields["FromUserName"]) == (OPENID, ACCOUNT)
    assert abs(int(fields["CreateTime"]) - time.time()) < 5
    assert delivery.seconds < 0.5  # nothing to wait for
    assert (b"<Encrypt>" in delivery.body) is (mode != "plain")
    note = passive_note(bot, A)
    assert (note["parts_delivered"], note["delivered_with"]) == (1, str(A))


def test_an_answer_that_comes_during_the_wait_is_answered_at_once(client, bot):
    queue_later(bot, 0.25, A, "来了")
    delivery = deliver(client, bot, "safe", text_xml(msg_id=A))
    assert content(delivery) == "来了"
    assert 0.25 <= delivery.seconds < 0.6


# -- late ------------------------------------------------------------------------------------


def test_a_late_answer_holds_the_callback_past_the_deadline_and_the_redelivery_carries_it(client, bot):
    first = deliver(client, bot, "safe", text_xml(msg_id=A))
    # Empty, and only after the hold: WeChat has given up on it and delivers again.
    assert (first.status, first.body) == (200, b"")
    assert first.seconds >= 0.9

    queue(bot, A, "慢慢来的回答")
    second = deliver(client, bot, "safe", text_xml(msg_id=A))
    assert content(second) == "慢慢来的回答"
    assert second.seconds < 0.5
    assert InboundMessage.objects.count() == 1


def test_an_answer_that_comes_after_the_wait_is_left_for_the_redelivery(client, bot):
    # 0.75 s: after the 0.6 s wait, before the 0.9 s hold ends. WeChat stopped listening
    # at its deadline, so handing it over now would lose it.
    queue_later(bot, 0.75, A, "差一点")
    first = deliver(client, bot, "safe", text_xml(msg_id=A))
    assert first.body == b""
    assert content(deliver(client, bot, "safe", text_xml(msg_id=A))) == "差一点"


def test_the_last_delivery_answers_in_time_and_the_next_message_carries_the_answer(client, bot):
    question = "请详细解释一下量子纠缠的原理和应用"
    for _ in range(2):
        assert deliver(client, bot, "safe", text_xml(question, A)).body == b""
    last = deliver(client, bot, "safe", text_xml(question, A))
    # The third delivery is WeChat's last: answered within its 5 s, so the user sees a
    # line instead of "该公众号暂时无法提供服务".
    assert content(last) == STILL_THINKING
    assert last.seconds < 0.9
    assert "waiting_since" in passive_note(bot, A)

    answered(bot, A, "量子纠缠是……")
    queue(bot, A, "量子纠缠是……", question=question_snippet(question))
    queue(bot, B, "不客气")
    nxt = deliver(client, bot, "safe", text_xml("谢谢", B))

    assert content(nxt) == f"{earlier(question)}量子纠缠是……{SEPARATOR}不客气"
    note = passive_note(bot, A)
    assert (note["parts_delivered"], note["delivered_with"]) == (1, str(B))
    row = InboundMessage.objects.get(platform_message_id=str(A))
    assert row.replied_at is not None and row.status == MessageStatus.REPLIED


def test_a_delivery_after_our_answer_gets_the_same_answer_at_once(client, bot):
    # WeChat delivers again only if our answer did not reach it.
    queue(bot, A, "只说一次")
    assert content(deliver(client, bot, "safe", text_xml(msg_id=A))) == "只说一次"
    again = deliver(client, bot, "safe", text_xml(msg_id=A))
    assert content(again) == "只说一次" and again.seconds < 0.5
    assert passive_note(bot, A)["parts_delivered"] == 1  # repeated, not handed over twice


def test_an_answer_is_handed_over_once(client, bot):
    queue(bot, A, "第一个回答")
    assert content(deliver(client, bot, "safe", text_xml(msg_id=A))) == "第一个回答"
    queue(bot, B, "第二个回答")
    assert content(deliver(client, bot, "safe", text_xml("再问", B))) == "第二个回答"


def test_a_redelivery_of_a_message_answered_with_another_is_acknowledged_at_once(client, bot):
    # WeChat's redelivery of A came so late that A's answer went out with B's reply.
    assert deliver(client, bot, "safe", text_xml("A?", A)).body == b""
    PassiveOutbox(bot.uuid).end_live(str(A))
    answered(bot, A, "A!")
    queue(bot, A, "A!", question="A?")
    queue(bot, B, "B!")
    assert content(deliver(client, bot, "safe", text_xml("B?", B))) == f"{earlier('A?')}A!{SEPARATOR}B!"

    for _ in range(2):  # no waiting, no hold, and no "still thinking" on the last one
        late = deliver(client, bot, "safe", text_xml("A?", A))
        assert (late.body, late.seconds < 0.5) == (b"success", True)


def test_a_replay_beyond_wechats_deliveries_is_not_held(client, bot):
    for _ in range(2):
        assert deliver(client, bot, "safe", text_xml(msg_id=A)).body == b""
    assert content(deliver(client, bot, "safe", text_xml(msg_id=A))) == STILL_THINKING
    outbox = PassiveOutbox(bot.uuid)
    outbox.redis.delete(f"{outbox.prefix}:answered:{A}")  # a minute later: forgotten
    replay = deliver(client, bot, "safe", text_xml(msg_id=A))
    assert (replay.body, replay.seconds < 0.5) == (b"success", True)


def test_a_failed_message_is_acknowledged_without_waiting(client, bot):
    assert deliver(client, bot, "safe", text_xml(msg_id=A)).body == b""
    InboundMessage.objects.filter(platform_message_id=str(A)).update(status=MessageStatus.FAILED)

    for _ in range(3):  # the rest of WeChat's deliveries, and a replay beyond them
        again = deliver(client, bot, "safe", text_xml(msg_id=A))
        assert (again.body, again.seconds < 0.5) == (b"success", True)


def test_a_failed_message_still_hands_over_what_earlier_messages_left(client, bot):
    assert deliver(client, bot, "safe", text_xml(msg_id=B)).body == b""
    InboundMessage.objects.filter(platform_message_id=str(B)).update(status=MessageStatus.FAILED)
    queue(bot, A, "早先的回答", question="早先的问题")
    assert content(deliver(client, bot, "safe", text_xml(msg_id=B))) == f"{earlier('早先的问题')}早先的回答"


# -- whose answer goes where -------------------------------------------------------------------


def test_answers_do_not_cross_users(client, bot):
    queue(bot, A, "给第一个人的", openid=OTHER_USER, question="别人的问题")
    queue(bot, B, "给我的")
    assert content(deliver(client, bot, "safe", text_xml(msg_id=B))) == "给我的"
    other = deliver(client, bot, "safe", text_xml("我的新问题", C, openid=OTHER_USER))
    queue(bot, C, "新回答", openid=OTHER_USER)  # too late for this delivery
    assert other.body == b""
    assert content(deliver(client, bot, "safe", text_xml("我的新问题", C, openid=OTHER_USER))) == (
        f"{earlier('别人的问题')}给第一个人的{SEPARATOR}新回答"
    )


def test_the_answer_of_a_message_wechat_still_holds_is_left_to_it(client, bot):
    outbox = PassiveOutbox(bot.uuid)
    outbox.mark_live(str(A), 10)  # A's own callback is waiting for it
    queue(bot, A, "A 的回答")
    queue(bot, B, "B 的回答")
    assert content(deliver(client, bot, "safe", text_xml(msg_id=B))) == "B 的回答"
    assert content(deliver(client, bot, "safe", text_xml(msg_id=A))) == "A 的回答"


def test_the_parts_of_one_answer_stay_together(client, bot):
    # The task paces its sends, so another answer can be queued between two parts.
    queue(bot, A, "A1", question="A?", index=0)
    queue(bot, B, "B!", question="B?")
    queue(bot, A, "A2", question="A?", index=1)
    queue(bot, C, "C!")
    assert content(deliver(client, bot, "safe", text_xml("C?", C))) == SEPARATOR.join(
        [f"{earlier('A?')}A1", "A2", f"{earlier('B?')}B!", "C!"]
    )


def test_a_retried_send_is_queued_once(client, bot):
    queue(bot, A, "一遍")
    queue(bot, A, "一遍")  # the task retried the same part (same idempotency key)
    assert content(deliver(client, bot, "safe", text_xml(msg_id=A))) == "一遍"
    assert PassiveOutbox(bot.uuid).redis.llen(f"{PassiveOutbox(bot.uuid).prefix}:outbox:{OPENID}") == 0


def test_concurrent_callbacks_of_one_user_never_take_a_part_twice(bot):
    outbox = PassiveOutbox(bot.uuid)
    for n in range(40):
        queue(bot, 1000 + n, f"part {n}", question=f"q{n}")
    taken: list[str] = []

    def take(msgid: int) -> None:
        while (result := PassiveOutbox(bot.uuid).take(OPENID, str(msgid), require_own=False)) is not None:
            taken.extend(part.id for part in result.parts)

    threads = [threading.Thread(target=take, args=(9000 + n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted(f"sb-test-{1000 + n}-0" for n in range(40))
    assert outbox.redis.llen(f"{outbox.prefix}:outbox:{OPENID}") == 0


# -- length ------------------------------------------------------------------------------------


def strip_notes(text: str, own_answers: list[str]) -> str:
    """The model's text in a reply: without our lines and the short answers in it."""
    text = re.sub(r"【你之前问“[^”]*”的回答】\n", "", text.removesuffix(CONTINUED))
    for own in own_answers:
        text = text.replace(SEPARATOR + own, "")
    return text


def test_a_long_answer_is_handed_over_in_parts_never_cut(client, bot):
    answer = "\n\n".join(f"第{n}段：" + "很长的内容。" * 60 for n in range(6))  # about 6.5 kB
    parts = [p for p in split_reply(answer, WeChatMPAdapter(bot).max_reply_length, "bytes") if p.strip()]
    assert len(parts) >= 4
    first = deliver(client, bot, "safe", text_xml("讲个长故事", A))  # held: nothing yet
    assert first.body == b""
    answered(bot, A, answer)
    for index, part in enumerate(parts):
        queue(bot, A, part, question="讲个长故事", index=index)

    contents = [content(deliver(client, bot, "safe", text_xml("讲个长故事", A)))]
    outbox = PassiveOutbox(bot.uuid)
    owns: list[str] = []
    while outbox.redis.llen(f"{outbox.prefix}:outbox:{OPENID}") and len(owns) < 10:
        # The user sends "继续"; the model answers it briefly.
        owns.append(f"ok-{len(owns)}")
        queue(bot, C + len(owns), owns[-1], question="继续")
        contents.append(content(deliver(client, bot, "safe", text_xml("继续", C + len(owns)))))

    assert passive_note(bot, A)["parts_delivered"] == len(parts)
    assert all(len(c.encode("utf-8")) <= 2048 for c in contents)
    assert all(c.endswith(CONTINUED) for c in contents[:-1]) and not contents[-1].endswith(CONTINUED)
    assert "".join(strip_notes(c, owns) for c in contents) == answer
    for own in owns:  # every short answer exactly once
        assert sum(c.count(own) for c in contents) == 1


def test_a_part_queued_under_the_larger_limit_is_split_not_cut(client, bot):
    # Queued while the bot used the customer-service API (2048-byte parts), delivered
    # after it was switched to passive mode.
    big = "字" * 682  # 2046 bytes
    queue(bot, A, big)
    head = content(deliver(client, bot, "safe", text_xml(msg_id=A)))
    assert head.endswith(CONTINUED) and len(head.encode()) <= 2048
    queue(bot, B, "好")
    tail = content(deliver(client, bot, "safe", text_xml("继续", B)))
    assert strip_notes(head, []) + strip_notes(tail, ["好"]) == big


def test_our_notes_fit_the_room_kept_for_them():
    longest_question = question_snippet("𠀀" * 40)  # 4 bytes a character
    notes = EARLIER_ANSWER.format(question=longest_question) + max(CONTINUED, SEPARATOR + STILL_THINKING, key=len)
    assert len(notes.encode("utf-8")) <= NOTE_BYTES


def test_text_xml_cannot_carry_is_dropped_and_the_rest_kept(client, bot):
    queue(bot, A, "a]]>b\x00c\x1bd\ne")
    assert content(deliver(client, bot, "safe", text_xml(msg_id=A))) == "a]]>bcd\ne"


# -- failures ----------------------------------------------------------------------------------


def test_redis_down_answers_success_and_keeps_the_row(client, bot, monkeypatch):
    dead = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    monkeypatch.setattr(passive, "get_redis_connection", lambda alias: dead)
    delivery = deliver(client, bot, "safe", text_xml(msg_id=A))
    assert delivery.body == b"success"
    assert InboundMessage.objects.filter(platform_message_id=str(A)).exists()


def test_a_part_without_a_msgid_cannot_be_queued(bot):
    with pytest.raises(TransportError) as caught:
        WeChatMPAdapter(bot).send(
            OutboundReply(
                chat_id=OPENID, chat_type="p2p", sender_id=OPENID, text="x", reply_context={}, idempotency_key="k"
            ),
            http=None,
        )
    assert caught.value.permanent is True


def test_queued_parts_round_trip():
    part = QueuedPart(id="sb-1-2-0", msgid="1", text='中文 "quoted" ]]>', question="问")
    assert QueuedPart.decode(part.encode().encode()) == part
