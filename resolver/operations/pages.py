"""The block page's HTML in Vietnamese and English: the page, its two forms, the answers to them; nothing external."""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
from html import escape

from resolver.filtering import policy
from resolver.operations import requestbox

HOTLINE = "111"  # Tổng đài điện thoại quốc gia bảo vệ trẻ em: free, day and night
UNBLOCK_PATH = "/_schooldns/unblock"
REPORT_PATH = "/_schooldns/report"
MAX_SITE_CHARS = 300  # the report form's field: a name (253) or a short URL

# Each text in both languages: (Vietnamese, English). Written for children of 6 to 18: short words,
# "em" as a Vietnamese teacher says it to a pupil.
Text = tuple[str, str]

CATEGORIES: dict[str, Text] = {
    "adult": ("Nội dung người lớn", "Adult content"),
    "gambling": ("Cờ bạc", "Gambling"),
    "violence": ("Bạo lực", "Violence"),
    "drugs": ("Ma túy", "Drugs"),
    "games": ("Trò chơi", "Games"),
    "social": ("Mạng xã hội", "Social media"),
    "malware": ("Phần mềm độc hại", "Harmful software"),
    "phishing": ("Lừa đảo", "Scam"),
    "csam": ("Nội dung bị pháp luật cấm", "Content the law forbids"),
    "bypass": ("Vượt bộ lọc (VPN, proxy)", "Getting around the filter (VPN, proxy)"),
    policy.DENY_CATEGORY: ("Trang nhà trường chặn", "A site your school blocks"),
    policy.SAFE_SEARCH_CATEGORY: ("Tìm kiếm không an toàn", "Search without safe search"),
}

DECIDED_BY: dict[policy.Authority, Text] = {
    policy.Authority.PROVINCE: ("Sở Giáo dục (cả tỉnh)", "The province (every school)"),
    policy.Authority.SCHOOL: ("Nhà trường của em", "Your school"),
    policy.Authority.DENY: ("Nhà trường của em", "Your school"),
}

UNBLOCK_REASONS: dict[requestbox.UnblockReason, Text] = {
    requestbox.UnblockReason.SCHOOLWORK: ("Em cần trang này để học", "I need it for schoolwork"),
    requestbox.UnblockReason.NOT_HARMFUL: ("Trang này không có hại", "This site is not harmful"),
    requestbox.UnblockReason.OTHER: ("Lý do khác", "Another reason"),
}

REPORT_REASONS: dict[requestbox.ReportReason, Text] = {
    requestbox.ReportReason.ADULT: ("Nội dung người lớn", "Adult content"),
    requestbox.ReportReason.VIOLENCE: ("Bạo lực, đáng sợ", "Violent or frightening"),
    requestbox.ReportReason.GAMBLING: ("Cờ bạc", "Gambling"),
    requestbox.ReportReason.SCAM: ("Lừa đảo", "A scam"),
    requestbox.ReportReason.BULLYING: ("Bắt nạt, quấy rối", "Bullying or harassment"),
    requestbox.ReportReason.OTHER: ("Điều khác", "Something else"),
}

STYLE = """
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;
color:#1d2430;background:#f4f6f8}
main{max-width:34rem;margin:0 auto;padding:1rem}
h1{font-size:1.6rem;line-height:1.25;margin:.5rem 0}
h2{font-size:1.15rem;margin:0 0 .5rem}
.en{display:block;color:#556070;font-size:.9em;font-weight:normal}
.site{font:1.1rem/1.3 ui-monospace,monospace;background:#fff;border:1px solid #d5dbe3;border-radius:6px;
padding:.4rem .6rem;overflow-wrap:anywhere}
dl{display:grid;grid-template-columns:auto 1fr;gap:.35rem .8rem;margin:1rem 0}
dt{font-weight:600}dd{margin:0}
section,form{background:#fff;border:1px solid #d5dbe3;border-radius:10px;padding:.9rem 1rem;margin:1rem 0}
ul{padding-left:1.2rem;margin:0}li{margin:.4rem 0}
.hotline{display:block;text-decoration:none;color:#fff;background:#b3261e;border-radius:10px;
padding:.9rem 1rem;margin:1rem 0}
.hotline strong{display:block;font-size:2.4rem;line-height:1.1}
.hotline .en{color:#ffe1dc}
label{display:block;margin:.5rem 0 .2rem;font-weight:600}
select,input,button{font:inherit;width:100%;box-sizing:border-box;padding:.55rem;border-radius:6px;
border:1px solid #9aa5b4}
button{margin-top:.8rem;background:#1f5fbf;color:#fff;border:0;font-weight:600}
.note{color:#556070;font-size:.85em;margin:.6rem 0 0}
"""

# The page loads nothing: no script, image, font or style from anywhere, its own style only (by hash).
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    # No referrer to other sites; to its own, so that a form post carries its Origin (checked).
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # a name unblocked a minute ago must not show the page from a cache
    "X-Content-Type-Options": "nosniff",
}


def both(text: Text) -> str:
    """Vietnamese, then the English beneath it (escaped)."""
    return f'{escape(text[0])} <span class="en" lang="en">{escape(text[1])}</span>'


def label_of(category: str) -> Text:
    """A category as a child reads it; a category of the province's own naming shows its name."""
    return CATEGORIES.get(category, (category, category))


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """What one page shows: nothing about the child, only the site, its block and the school."""

    name: str | None  # the site asked for; None: the block page's own address
    block: policy.Block | None  # None: not blocked (now)
    school: str | None  # the school's name; None: the address is in no school's networks
    unblock_token: str | None  # the unblock form's token; None: no unblock form
    report_token: str | None  # the report form's token; None: no report form


def render(page: Page) -> str:
    if page.block is not None and page.name is not None:
        title: Text = ("Trang web này bị chặn", "This site is blocked")
        facts = [
            (("Loại", "Category"), label_of(page.block.category)),
            (("Ai quyết định", "Decided by"), DECIDED_BY[page.block.authority]),
        ]
    elif page.name is not None:
        title = ("Trang web này không bị chặn nữa", "This site is not blocked now")
        facts = []
    else:
        title = ("Trang chặn của nhà trường", "Your school's block page")
        facts = []
    if page.school is not None:
        facts.insert(1 if facts else 0, (("Trường", "School"), (page.school, page.school)))
    body = [f"<h1>{both(title)}</h1>"]
    if page.name is not None:
        body.append(f'<p class="site">{escape(page.name)}</p>')
    if page.block is None and page.name is not None:
        body.append(
            "<p>"
            + both(
                (
                    "Hãy đợi một phút rồi tải lại trang.",
                    "Wait a minute, then load the page again.",
                )
            )
            + "</p>"
        )
    if facts:
        body.append("<dl>" + "".join(f"<dt>{both(k)}</dt><dd>{_fact(v)}</dd>" for k, v in facts) + "</dl>")
    body.append(_what_to_do(page.unblock_token is not None))
    body.append(_hotline())
    if page.unblock_token is not None and page.name is not None:
        body.append(_unblock_form(page.unblock_token, page.name))
    if page.report_token is not None:
        body.append(_report_form(page.report_token))
    return _document(title, "".join(body))


def _fact(value: Text) -> str:
    return escape(value[0]) if value[0] == value[1] else both(value)


def _what_to_do(can_ask: bool) -> str:
    items: list[Text] = [
        ("Em không làm gì sai cả.", "You did nothing wrong."),
        (
            "Nếu em cần trang này để học, hãy nói với thầy cô"
            + (", hoặc bấm nút “Gửi cho nhà trường” bên dưới." if can_ask else "."),
            "If you need this site for schoolwork, tell your teacher"
            + (', or press "Send to my school" below.' if can_ask else "."),
        ),
        (
            "Nếu điều gì trên mạng làm em sợ, buồn hay khó chịu, hãy kể với người lớn mà em tin tưởng, hoặc gọi 111.",
            "If something online made you scared, sad or uncomfortable, tell an adult you trust, or call 111.",
        ),
    ]
    return (
        f"<section><h2>{both(('Em nên làm gì?', 'What can I do?'))}</h2><ul>"
        + "".join(f"<li>{both(item)}</li>" for item in items)
        + "</ul></section>"
    )


def _hotline() -> str:
    return (
        f'<a class="hotline" href="tel:{HOTLINE}"><strong>{HOTLINE}</strong>'
        + both(
            (
                "Tổng đài quốc gia bảo vệ trẻ em: miễn phí, cả ngày lẫn đêm.",
                "National child protection hotline: free, day and night.",
            )
        )
        + "</a>"
    )


def _unblock_form(token: str, name: str) -> str:
    options = "".join(
        f'<option value="{reason.value}">{escape(text[0])} / {escape(text[1])}</option>'
        for reason, text in UNBLOCK_REASONS.items()
    )
    return (
        f'<form method="post" action="{UNBLOCK_PATH}" id="unblock">'
        f"<h2>{both(('Trang này bị chặn nhầm?', 'Blocked by mistake?'))}</h2>"
        f'<input type="hidden" name="token" value="{escape(token)}">'
        f'<input type="hidden" name="name" value="{escape(name)}">'
        f'<label for="unblock-reason">{both(("Vì sao?", "Why?"))}</label>'
        f'<select id="unblock-reason" name="reason">{options}</select>'
        f'<button type="submit">Gửi cho nhà trường / Send to my school</button>'
        f'<p class="note">{_nothing_about_you()}</p></form>'
    )


def _report_form(token: str) -> str:
    options = "".join(
        f'<option value="{reason.value}">{escape(text[0])} / {escape(text[1])}</option>'
        for reason, text in REPORT_REASONS.items()
    )
    return (
        f'<form method="post" action="{REPORT_PATH}" id="report">'
        f"<h2>{both(('Báo cáo một trang web có hại', 'Report a harmful site'))}</h2>"
        f'<input type="hidden" name="token" value="{escape(token)}">'
        f'<label for="report-site">{both(("Tên trang web", "The site’s name"))}</label>'
        f'<input id="report-site" name="site" required maxlength="{MAX_SITE_CHARS}" '
        'placeholder="example.com" autocomplete="off" autocapitalize="none" spellcheck="false">'
        f'<label for="report-reason">{both(("Trang đó có gì?", "What is on it?"))}</label>'
        f'<select id="report-reason" name="reason">{options}</select>'
        f'<button type="submit">Báo cáo / Report</button>'
        f'<p class="note">{_nothing_about_you()}</p></form>'
    )


def _nothing_about_you() -> str:
    return both(
        (
            "Chỉ gửi tên trang web và trường của em, không gửi tên em hay máy của em.",
            "Only the site and your school are sent: not your name, not your device.",
        )
    )


class Answer(enum.Enum):
    """The page a form post gets back (ANSWERS: its status and its words)."""

    SENT = "sent"
    SENT_AGAIN = "sent again"
    REPORTED = "reported"
    ALREADY_BLOCKED = "already blocked"
    NOT_BLOCKED = "not blocked"
    FULL = "full"
    NOT_A_SITE = "not a site"
    NO_SCHOOL = "no school"
    EXPIRED = "expired"
    TOO_MANY = "too many"


_NOT_SENT: Text = ("Chưa gửi được", "Not sent")
_STAFF = "The staff who look after the school's internet will look at "
ANSWERS: dict[Answer, tuple[int, Text, Text]] = {
    Answer.SENT: (
        200,
        ("Đã gửi cho nhà trường", "Sent to your school"),
        ("Thầy cô phụ trách sẽ xem xét.", _STAFF + "it."),
    ),
    Answer.SENT_AGAIN: (
        200,
        ("Đã gửi cho nhà trường", "Sent to your school"),
        (
            "Trang này đã có người hỏi và đang chờ thầy cô xem xét.",
            "Someone has asked about this site already: it is waiting for the staff.",
        ),
    ),
    Answer.REPORTED: (
        200,
        ("Cảm ơn em đã báo cáo", "Thank you for telling us"),
        ("Thầy cô phụ trách sẽ xem xét trang này.", _STAFF + "this site."),
    ),
    Answer.ALREADY_BLOCKED: (
        200,
        ("Trang này đã bị chặn rồi", "That site is blocked already"),
        ("Cảm ơn em đã báo cáo.", "Thank you for telling us."),
    ),
    Answer.NOT_BLOCKED: (
        200,
        ("Trang này không bị chặn nữa", "This site is not blocked now"),
        ("Hãy đợi một phút rồi thử lại.", "Wait a minute, then try again."),
    ),
    Answer.FULL: (
        503,
        _NOT_SENT,
        (
            "Nhà trường đang có quá nhiều yêu cầu chờ. Hãy nói trực tiếp với thầy cô.",
            "Your school has too many requests waiting. Please tell your teacher.",
        ),
    ),
    Answer.NOT_A_SITE: (
        400,
        _NOT_SENT,
        (
            "Đó không phải là tên một trang web. Hãy viết như: example.com",
            "That is not the name of a website. Write it like this: example.com",
        ),
    ),
    Answer.NO_SCHOOL: (
        403,
        _NOT_SENT,
        (
            "Thiết bị này không ở trong mạng của trường nào. Hãy nói với thầy cô.",
            "This device is not on a school's network. Please tell your teacher.",
        ),
    ),
    Answer.EXPIRED: (
        403,
        _NOT_SENT,
        (
            "Trang này đã cũ. Hãy quay lại, tải lại trang rồi gửi lại.",
            "This page is too old. Go back, load the page again and send again.",
        ),
    ),
    Answer.TOO_MANY: (
        429,
        _NOT_SENT,
        ("Em đã gửi nhiều lần rồi. Hãy đợi một lúc.", "You have sent a lot. Please wait a while."),
    ),
}


def render_answer(answer: Answer) -> str:
    _, title, text = ANSWERS[answer]
    body = f"<h1>{both(title)}</h1><p>{both(text)}</p>" + _hotline()
    return _document(title, body)


def _document(title: Text, body: str) -> str:
    return (
        '<!doctype html><html lang="vi"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{escape(title[0])} / {escape(title[1])}</title><style>{STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
