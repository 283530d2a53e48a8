"""The operators' console in a real headless Chromium (Playwright), against the API on 127.0.0.1 and PostgreSQL.

Needs /usr/bin/chromium (Debian's ``chromium``) and the ``playwright`` package; never downloads a browser.
Screenshots go to test-artifacts/ (git-ignored). ``UPDATE_DOCS_SCREENSHOT=1`` also rewrites docs/img/console.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
from collections.abc import AsyncIterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import asyncpg
import cbec_queue
import pytest
import pytest_asyncio
from aiohttp import web
from lxml import etree

from adapters import warehouse
from gateway import db, samples
from gateway.api import PIPELINE, create_app
from gateway.config import ForwardingSettings
from gateway.console import CONSOLE
from gateway.render import render
from gateway.sandbox.receipts import build_receipt, build_tax_bills, new_guid, return_time
from gateway.sandbox.ukey import start_ukey
from gateway.signing import RsaSha1Key, Signer, SigningUnavailable, generate_test_key
from gateway.ukey import UKeySigner
from gateway.workers import routing_router
from tests import apiutil
from tests.apiutil import ADMIN, PLATFORM_A, Client, sign_as_agent
from tests.consoleutil import (
    build_app,
    key_of,
    make_dead_letter,
    make_forwarded,
    new_shipment,
    seed_realistic,
    start,
    submit,
    xml_of,
)
from tests.dbutil import fresh_database
from tests.forwardutil import CUSTOMS_KEY, running_stack, wait_for
from tests.forwardutil import legs as fwd_legs
from tests.forwardutil import shipment as fwd_shipment

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "console.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

try:
    from playwright.async_api import Browser, Locator, Page, Route, async_playwright, expect
except ImportError:  # pragma: no cover - depends on the machine
    async_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.db,
    pytest.mark.skipif(
        async_playwright is None, reason="the playwright package is not installed (pip install playwright)"
    ),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install -y chromium)"),
]


@pytest_asyncio.fixture(loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield b
        finally:
            await b.close()


class Site:
    def __init__(self, base: str, api: Client, pool: asyncpg.Pool, app: web.Application) -> None:
        self.base, self.api, self.pool, self.app = base, api, pool, app


@pytest_asyncio.fixture(loop_scope="session")
async def site(db_pool: asyncpg.Pool) -> AsyncIterator[Site]:
    app = build_app(db_pool, poll_interval=0.3)
    runner, base = await start(app)
    async with aiohttp.ClientSession() as session:
        yield Site(base, Client(session, base), db_pool, app)
    await asyncio.wait_for(runner.cleanup(), 10)


async def new_page(browser: Browser, errors: list[str]) -> Page:
    context = await browser.new_context(
        viewport={"width": 1366, "height": 768}, timezone_id="Asia/Shanghai", locale="zh-CN"
    )
    page = await context.new_page()
    page.set_default_timeout(10_000)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    return page


async def sign_in(page: Page, base: str, key: str) -> None:
    await page.goto(base + "/ops")
    assert page.url.endswith("/ops/login")
    await page.fill("#key", key)
    await page.click("button[type=submit]")


async def live_console(browser: Browser, site: Site, errors: list[str]) -> Page:
    """A new page signed in with the admin key, on the overview with its live feed connected."""
    page = await new_page(browser, errors)
    await sign_in(page, site.base, ADMIN)
    await page.wait_for_url(site.base + "/ops")
    await page.wait_for_selector("#live[data-state='live']")
    return page


async def list_by_state(page: Page, state: str) -> None:
    """The overview's list of the shipments in ``state`` (``any``: all), as the filter form asks for it."""
    await page.select_option("#filters select[name=state]", state)
    await page.click("#filters button[type=submit]")


def shot(name: str) -> str:
    ARTIFACTS.mkdir(exist_ok=True)
    return str(ARTIFACTS / name)


async def test_console_live_mismatch_detail_and_sign_out(browser: Browser, site: Site) -> None:
    errors: list[str] = []
    async with asyncio.timeout(120):
        await submit(site.api, new_shipment(401))  # one matched shipment before the page opens
        page = await new_page(browser, errors)

        # a submitter key is refused, an admin key gets in
        await sign_in(page, site.base, PLATFORM_A)
        assert "submitter" in await page.inner_text(".login-error")
        errors.clear()  # the browser logs the refused sign-in's 403 answer, as it should
        await sign_in(page, site.base, ADMIN)
        await page.wait_for_url(site.base + "/ops")
        await expect(page.locator("#kpi-matched")).to_have_text("1")
        await page.wait_for_selector("#live[data-state='live']")
        if Path("/usr/share/fonts/truetype/wqy").exists():
            assert await page.evaluate("document.fonts.check('16px \"WenQuanYi Micro Hei\"', '不一致')")
        await page.evaluate("window.__noReload = 'still here'")

        # inconsistent documents arrive through the API: the mismatch appears without a reload
        s = samples.broken(new_shipment(402), "amount_mismatch")
        order_no = s.order_doc["orderNo"]
        await submit(site.api, s)
        receipt = build_receipt("CEB312", {
            "guid": s.order_doc["guid"], "ebpCode": s.order_doc["ebpCode"], "ebcCode": s.order_doc["ebcCode"],
            "orderNo": order_no, "returnStatus": "120", "returnTime": return_time(), "returnInfo": "新增申报成功",
        })  # fmt: skip
        assert (await site.api.post_xml(receipt)).status == 202
        row = f"#list-table tbody tr[data-order='{order_no}']"
        await page.wait_for_selector(row)
        await expect(page.locator("#kpi-mismatched")).to_have_text("1")
        assert await page.evaluate("window.__noReload") == "still here"
        row_text = await page.inner_text(row)
        assert "acturalPaid" in row_text and s.order_doc["buyerName"] in row_text
        await page.screenshot(path=shot("browser-live-mismatch.png"))

        # its detail shows both values and the documents' XML on demand
        await page.click(f"{row} a")
        await page.wait_for_selector("table.findings")
        findings = await page.inner_text("table.findings")
        paid, amount = Decimal(s.order_doc["acturalPaid"]), Decimal(s.payment_doc["amountPaid"])
        assert f"{paid:.2f}" in findings and f"{amount:.2f}" in findings and paid != amount
        assert "CEB311" in findings and "CEB411" in findings
        timeline = await page.inner_text(".timeline")
        for title in (
            "CEB311 订单",
            "CEB411 支付单",
            "CEB511 运单",
            "CEB621 清单",
            "回执 CEB312 · 120",
            "新增申报成功",
        ):
            assert title in timeline
        await page.click(".timeline li.document >> nth=0 >> .xml-toggle")
        xml = await page.inner_text("pre.xml")
        assert order_no in xml and "<ceb:orderNo>" in xml
        await page.screenshot(path=shot("browser-shipment.png"), full_page=True)

        # sign out: back to the sign-in page, the session is gone
        await page.click("#sign-out")
        await page.wait_for_url(site.base + "/ops/login")
        await page.goto(site.base + "/ops")
        assert page.url.endswith("/ops/login")
        await page.context.close()
    assert errors == []


async def test_a_refused_message_appears_in_the_refused_panel_without_a_reload(browser: Browser, site: Site) -> None:
    """An operator helping a seller sees what the gateway refused and why: a message refused while the page is open
    appears in the refused panel live, with its sender, its status and its issues' codes, paths and messages."""
    errors: list[str] = []
    async with asyncio.timeout(60):
        page = await live_console(browser, site, errors)
        await expect(page.locator("#refused-empty")).to_be_visible()
        await expect(page.locator("#questions-panel")).to_be_hidden()  # no 179 platform configured: no 179 panel
        await page.evaluate("window.__noReload = 'still here'")
        order = samples.render_shipment(new_shipment(405))["CEB311"].replace(b"ceb:orderNo>", b"ceb:orderNO>")
        refused = await site.api.post_xml(order, key=PLATFORM_A)
        assert refused.status == 422, refused.body
        row = page.locator("#refused-table tbody tr").first
        await expect(row).to_contain_text("platform-a")
        text = await row.inner_text()
        assert "CEB311" in text and "422" in text and "schema." in text and "orderNO" in text, text
        assert etree.fromstring(order).get("guid") in text  # its guid, to find it by
        assert await page.evaluate("window.__noReload") == "still here"
        await expect(page.locator("#refused-empty")).to_be_hidden()
        # one sender's refusals: another's shows none of these; cleared, they are back
        await page.fill("#refused-filters input[name=submitter]", "another-seller")
        await page.click("#refused-filters button[type=submit]")
        await expect(page.locator("#refused-empty")).to_be_visible()
        await page.click("#refused-filters button[type=reset]")
        await expect(row).to_contain_text("platform-a")
        await row.locator(".sent-toggle").click()  # what was sent, as received
        await expect(page.locator("#refused-table tr.sent pre")).to_contain_text("<ceb:orderNO>")
        widths = await page.evaluate("[document.querySelector('#refused-table').offsetWidth,"
                                     " document.querySelector('#refused-panel').clientWidth]")
        assert widths[0] <= widths[1], widths  # one long line of XML does not widen the panel
        await page.locator("#refused-panel").screenshot(path=shot("browser-refused.png"))
        await page.context.close()
    assert errors == []


async def test_poison_order_dead_letter_is_replayed_from_the_page(browser: Browser, db_dsn: str) -> None:
    """The gateway forwarding to its sandbox: an order the sandbox answers 400 (POISON-) dies at once; once
    the sandbox takes POISON again (``scenarios_off``), Replay from the page gets it delivered and receipted."""
    errors: list[str] = []
    async with asyncio.timeout(30), running_stack(db_dsn) as stack:
        feed = stack.app[CONSOLE].feed
        assert feed is not None
        feed.interval = 0.2  # queue figures every 5 polls: a second instead of five
        page = await new_page(browser, errors)
        await sign_in(page, stack.base, ADMIN)
        await page.wait_for_url(stack.base + "/ops")
        await page.wait_for_selector("#live[data-state='live']")

        s = fwd_shipment(403, prefix="POISON-")
        await stack.submit(s.order)
        await stack.wait_sql("SELECT count(*) = 1 FROM jobs WHERE state = 'dead'")
        job_id = await stack.fetchval("SELECT id FROM jobs WHERE state = 'dead'")
        dead_row = f"#dead-table tbody tr[data-job='{job_id}']"
        await page.wait_for_selector(dead_row)  # the feed's queue event brings it in
        row_text = await page.inner_text(dead_row)
        assert "customs" in row_text and "permanent" in row_text and "400" in row_text
        assert f"CEB311:{s.order_doc['ebpCode']}:{s.order_doc['orderNo']}" in row_text  # the document it holds
        await page.screenshot(path=shot("browser-dead-letter.png"), full_page=True)

        # "the cause is fixed": the sandbox takes POISON orders from now on
        fixed = {"scenarios_off": ["POISON"]}
        async with aiohttp.ClientSession() as http, http.post(stack.sandbox.url + "/sandbox/config", json=fixed) as r:
            assert r.status == 200
        await page.click(f"{dead_row} button.replay")
        await page.wait_for_selector(dead_row, state="detached")
        assert "queued again" in await page.inner_text("#toast")
        await stack.wait_sql(
            "SELECT forward_state = 'receipted' AND customs_status = '120' FROM documents WHERE message_id ="
            " (SELECT id FROM messages WHERE guid = $1)",
            s.order["guid"],
        )
        async with stack.pool.acquire() as conn:
            job = await cbec_queue.get_job(conn, job_id)
        assert job is not None and job["state"] == "done"
        assert [h["outcome"] for h in job["history"]] == ["permanent", "replayed", "ok"]
        assert "admin" in job["history"][1]["error"]  # the replay names who did it

        # the shipment page: the order's forward state and customs status, the transmission, the receipts
        key = urlencode({"ebpCode": s.order_doc["ebpCode"], "orderNo": s.order_doc["orderNo"]})
        await page.goto(f"{stack.base}/ops#/shipment?{key}")
        await page.wait_for_selector(".timeline li.transmission")
        timeline = await page.inner_text(".timeline")
        for text in (
            "receipted 已回执",
            "customs 海关 120",
            "Transmission 发送 → customs",
            "Receipt 回执 CEB312 · 2",
            "Receipt 回执 CEB312 · 120",
            "attempt history 尝试记录 (3)",
        ):
            assert text in timeline, text
        await page.screenshot(path=shot("browser-replayed-shipment.png"), full_page=True)
        await page.context.close()
    assert errors == []


async def test_the_shipment_page_shows_customs_tax_bills_beside_the_estimate(browser: Browser, db_dsn: str) -> None:
    """The sandbox's bill after the release, as estimated, consolidated by its status change (CEB818); a second bill
    whose VAT is not: its difference marked."""
    errors: list[str] = []
    async with asyncio.timeout(30), running_stack(db_dsn) as stack:
        s = fwd_shipment(404)
        for payload in fwd_legs(s):
            await stack.submit(payload)
        await stack.wait_status(s, "released")
        await stack.sandbox.wait_idle()
        (bill,) = (await stack.shipment(s))["tax_bills"]
        head = {"guid": new_guid(), "returnTime": return_time(), "invtNo": bill["invtNo"], "taxNo": "T-404-B",
                "customsTax": "0", "valueAddedTax": "999.00", "consumptionTax": "0", "status": "1"}
        line = {"gnum": "1", "gcode": s.inventory_doc["items"][0]["gcode"], "taxPrice": "1", "customsTax": "0",
                "valueAddedTax": "999.00", "consumptionTax": "0"}  # fmt: skip
        reply = await stack.client.request("POST", "/v1/receipts", key=CUSTOMS_KEY, content_type="application/xml",
                                           data=build_tax_bills("CEB816", [(head, [line])]))  # fmt: skip
        assert reply.status == 200

        async def shipped() -> bool:  # the released inventory's warehouse order, reported by the sandbox's warehouse
            docs = (await stack.shipment(s))["documents"]
            return any(o["status"] == "shipped" for d in docs for o in d.get("warehouse_orders", []))

        await wait_for(shipped, timeout=10, what="the warehouse's callbacks")

        page = await new_page(browser, errors)
        await sign_in(page, stack.base, ADMIN)
        await page.wait_for_url(stack.base + "/ops")
        key = urlencode({"ebpCode": s.order_doc["ebpCode"], "orderNo": s.order_doc["orderNo"]})
        await page.goto(f"{stack.base}/ops#/shipment?{key}")
        await expect(page.locator(".facts")).to_contain_text("shipped 已发货")  # the warehouse's order
        timeline = page.locator(".timeline")
        await expect(timeline).to_contain_text("Warehouse 仓库 WH")
        await expect(timeline).to_contain_text("accepted 已接单")
        same = page.locator(f"#tax-bills .tax-bill[data-tax-no='{bill['taxNo']}']")
        other = page.locator("#tax-bills .tax-bill[data-tax-no='T-404-B']")
        await expect(same).to_contain_text("2 consolidated 已汇总")
        await expect(other).to_contain_text("1 generated 已生成")
        text = await same.inner_text()
        assert bill["invtNo"] in text and "海关税单" in text and "网关估算" in text and bill["entDutyNo"] in text
        taxes = [bill[t] for t in ("customsTax", "valueAddedTax", "consumptionTax", "total")]
        for row in ("tr.billed", "tr.estimated"):
            assert (await same.locator(row).inner_text()).split("\t")[1:] == taxes, row
        assert await same.locator("td.differs").count() == 0
        differs = other.locator("td.differs")
        await expect(differs).to_have_count(2)  # the bill's VAT and the estimate's
        assert "999.00" in await differs.first.inner_text() and "tax.bill_differs" in await other.inner_text()
        assert "taxNo T-404-B · returnTime" in await page.inner_text(".timeline")  # its record among the receipts
        await page.screenshot(path=shot("browser-tax-bills.png"), full_page=True)
        await page.context.close()
    assert errors == []


async def test_the_shipment_page_sets_a_bill_corrected_for_a_return_beside_the_goods_kept(
    browser: Browser, db_dsn: str
) -> None:
    """A return of part of the goods concluded within the window: the sandbox's corrected bill over the estimate of
    the goods kept, no difference marked, and a note naming the return the estimate takes back."""
    errors: list[str] = []
    async with asyncio.timeout(30), running_stack(db_dsn) as stack:
        stack.sandbox.sandbox.config.tax_bill_status_delay = 60.0  # the return window stays open
        s = fwd_shipment(405, n_items=2)
        for payload in fwd_legs(s):
            await stack.submit(payload)
        await stack.wait_status(s, "released")
        inventory = next(d for d in (await stack.shipment(s))["documents"] if d["kind"] == "inventory")
        bills = "SELECT count(*) >= $2 FROM receipts WHERE message_type = 'CEB816' AND document_id = $1"
        await stack.wait_sql(bills, inventory["id"], 1)
        back = samples.import_return(random.Random(405), s.inventory_doc, inventory["invt_no"], items=[1])
        await stack.submit(json.loads(json.dumps(back, default=str)))
        await stack.wait_sql(bills, inventory["id"], 2)  # the bill corrected after the return's 399
        (bill,) = (await stack.shipment(s))["tax_bills"]
        assert bill["estimate"]["return"]["guid"] == back["documents"][0]["guid"]

        page = await new_page(browser, errors)
        await sign_in(page, stack.base, ADMIN)
        await page.wait_for_url(stack.base + "/ops")
        key = urlencode({"ebpCode": s.order_doc["ebpCode"], "orderNo": s.order_doc["orderNo"]})
        await page.goto(f"{stack.base}/ops#/shipment?{key}")
        shown = page.locator(f"#tax-bills .tax-bill[data-tax-no='{bill['taxNo']}']")
        await expect(shown.locator(".return-note")).to_contain_text(back["documents"][0]["guid"])
        assert "退货后留存" in await shown.locator("tr.estimated").inner_text()
        taxes = [bill[t] for t in ("customsTax", "valueAddedTax", "consumptionTax", "total")]
        for row in ("tr.billed", "tr.estimated"):
            assert (await shown.locator(row).inner_text()).split("\t")[1:] == taxes, row
        assert await shown.locator("td.differs").count() == 0
        await page.screenshot(path=shot("browser-tax-bill-corrected.png"), full_page=True)
        await page.context.close()
    assert errors == []



async def test_the_shipment_page_shows_its_parcel_unloaded_at_the_supervision_site(
    browser: Browser, db_dsn: str,
) -> None:
    """The site's 入库明细单 (CEB711) listing the parcel: in the timeline with the site, B/L, unloading place, how many
    parcels it lists and customs' warehouse-entry number (rkdNo, its CEB712)."""
    from tests.siteutil import BILL_NO, OPERATOR_NAME, delivery_xml, on_one_bill, waybill_nos

    errors: list[str] = []
    async with asyncio.timeout(30), running_stack(db_dsn) as stack:
        s = fwd_shipment(405)
        carrier = on_one_bill([s])
        for payload in fwd_legs(s):
            await stack.submit(payload)
        reply = await stack.client.post_xml(delivery_xml(carrier, [*waybill_nos([s]), "UNSEEN0000002"]))
        [doc] = reply.body["documents"]
        await stack.wait_sql("SELECT invt_no IS NOT NULL FROM documents WHERE doc_guid = $1", doc["doc_guid"])
        rkd_no = await stack.fetchval("SELECT invt_no FROM documents WHERE doc_guid = $1", doc["doc_guid"])
        page = await new_page(browser, errors)
        await sign_in(page, stack.base, ADMIN)
        await page.wait_for_url(stack.base + "/ops")
        key = urlencode({"ebpCode": s.order_doc["ebpCode"], "orderNo": s.order_doc["orderNo"]})
        await page.goto(f"{stack.base}/ops#/shipment?{key}")
        timeline = page.locator(".timeline")
        await expect(timeline).to_contain_text("CEB711 入库明细单")
        await expect(timeline).to_contain_text(f"at the site 已入库 {OPERATOR_NAME} · B/L {BILL_NO} · A区3号库位 · "
                                               f"2 parcels 件 · 入库单 rkdNo {rkd_no}")  # fmt: skip
        await page.context.close()
    assert errors == []


async def test_an_export_shipment_page_says_what_became_of_its_summary_declaration(
    browser: Browser, db_dsn: str
) -> None:
    """A released B-type export parcel awaits its summary declaration (汇总申报): the overview's panel, showing every
    consignor's, lists it once customs releases it without being asked again, then lists it for its consignor,
    linking its page; once customs' result is in, its page names the declaration its items went into (entryId, each
    item's gnum → gseqno) and the application, and the panel, left open, empties by itself."""
    from tests.test_summary import released_b_type, summarised

    errors: list[str] = []
    async with asyncio.timeout(60), running_stack(db_dsn) as stack:
        page = await new_page(browser, errors)
        await sign_in(page, stack.base, ADMIN)
        await page.wait_for_url(stack.base + "/ops")
        pending, empty = page.locator("#pending-table tbody tr"), page.locator("#pending-empty")
        await page.click("#pending-form button[type=submit]")  # no consignor named: every consignor's
        await expect(empty).to_have_text("Nothing awaits a summary of any consignor. 无待汇总清单")
        parcels, numbers = await released_b_type(stack, (51,))
        doc = parcels[0].inventory_doc
        await expect(pending).to_have_count(1, timeout=10_000)  # the feed's awaiting_at moved: read again
        assert doc["ebcCode"] in await pending.first.inner_text()
        await page.fill("#pending-form input[name=ebcCode]", doc["ebcCode"])
        await page.click("#pending-form button[type=submit]")
        await expect(pending).to_have_count(1)
        row = await pending.first.inner_text()
        for value in (numbers[0], doc["orderNo"], doc["logisticsNo"], f"{doc['agentCode']} / {doc['copNo']}"):
            assert value in row, row
        await pending.first.locator("a").click()  # its shipment's page
        facts = page.locator(".facts")
        await expect(facts).to_contain_text("Summary 汇总申报awaiting 待汇总")
        await page.goto(f"{stack.base}/ops#/")
        p, view = await summarised(stack, parcels, numbers)
        await expect(page.locator("#pending-table")).to_be_hidden(timeout=10_000)
        await expect(empty).to_have_text(f"Nothing awaits a summary of {doc['ebcCode']}. 无待汇总清单")
        key = urlencode({"ebpCode": doc["ebpCode"], "orderNo": doc["orderNo"]})
        await page.goto(f"{stack.base}/ops#/shipment?{key}")
        await page.reload()
        [result] = view["results"]
        await expect(facts).to_contain_text(f"declared 已汇总申报 · declaration 报关单 {result['entryId']}")
        text = await facts.inner_text()
        items = ", ".join(f"{li['gnum']}→{li['gnum']}" for li in doc["items"])  # the sandbox keeps the numbers
        assert f"items 商品 {items}" in text, text
        assert f"application 汇总申请 {p['documents'][0]['copNo']} · sumNo {view['sumNo']}" in text, text
        await page.context.close()
    assert errors == []

async def test_a_shipment_page_says_what_became_of_customs_179_question(browser: Browser, db_dsn: str) -> None:
    """An import shipment of a 179 platform: its page names the payment handed over and customs' question with its
    upload's outcome (customs' 10000 and message)."""
    from tests.test_realtime import PLATFORM_KEY, platforms

    errors: list[str] = []
    async with asyncio.timeout(60), running_stack(db_dsn, realtime=platforms(),
                                                  platform_keys={samples.EBP_CODE: PLATFORM_KEY}) as stack:
        s = fwd_shipment(441)
        r = await stack.client.request("POST", "/v1/payment-data", json_body=samples.payment_data(s))
        assert r.status == 201, r.body
        assert (await stack.submit(s.order)).status == 202
        order = s.order_doc

        async def uploaded() -> bool:
            view = (await stack.client.get(f"/v1/payment-data/{order['ebpCode']}/{order['orderNo']}")).body
            return [q["state"] for q in view.get("questions", [])] == ["uploaded"]

        await wait_for(uploaded, what="the 179 upload")
        page = await new_page(browser, errors)
        await sign_in(page, stack.base, ADMIN)
        await page.wait_for_url(stack.base + "/ops")
        key = urlencode({"ebpCode": order["ebpCode"], "orderNo": order["orderNo"]})
        await page.goto(f"{stack.base}/ops#/shipment?{key}")
        facts = page.locator(".facts")
        await expect(facts).to_contain_text(
            f"Payment data 支付原始数据 (179)handed over 已提供 (payTransactionId {s.payment_doc['payTransactionId']})")
        await expect(facts).to_contain_text("uploaded 已上传 — customs 海关 10000 上传成功")
        await page.context.close()
    assert errors == []


async def test_the_179_panel_follows_a_question_from_waiting_to_refused_and_replayed(
    browser: Browser, db_dsn: str
) -> None:
    """Customs asks about an order before its platform handed the payment over: the 179 panel shows the question
    waiting for the platform's data, live; the data comes and customs refuses the upload (a key it does not hold):
    refused, with customs' reason and a Replay button; the key mended, Replay uploads it and the question leaves the
    panel's view of those not uploaded (the view of all shows it uploaded)."""
    from tests.test_realtime import PLATFORM_KEY, platforms

    wrong = RsaSha1Key.from_pem(*generate_test_key("rsa", "not the platform's key"))
    errors: list[str] = []
    async with asyncio.timeout(60), running_stack(db_dsn, realtime=platforms(),
                                                  platform_keys={samples.EBP_CODE: wrong}) as stack:
        stack.sandbox.config.realtime_certs = [PLATFORM_KEY.certificate_der]
        feed = stack.app[CONSOLE].feed
        assert feed is not None
        feed.interval = 0.2
        page = await new_page(browser, errors)
        await sign_in(page, stack.base, ADMIN)
        await page.wait_for_url(stack.base + "/ops")
        await page.wait_for_selector("#live[data-state='live']")
        await expect(page.locator("#questions-empty")).to_contain_text("Every question customs asked has been uploaded")

        s = fwd_shipment(447)
        order_no = s.order_doc["orderNo"]
        await stack.sandbox.sandbox.ask_payment_data(samples.EBP_CODE, order_no)
        row = page.locator("#questions-table tbody tr").first
        await expect(row).to_contain_text("Waiting for the platform's data 待平台提交支付数据")
        await expect(row).to_contain_text(order_no)
        r = await stack.client.request("POST", "/v1/payment-data", json_body=samples.payment_data(s))
        assert r.status == 201, r.body
        await expect(row).to_contain_text("Refused by customs 海关拒收", timeout=20_000)
        await expect(row).to_contain_text("20000")
        await page.locator("#questions-panel").screenshot(path=shot("browser-179-refused.png"))

        stack.sandbox.config.realtime_certs = [wrong.certificate_der]  # customs holds the key signed with now
        await row.locator("button.replay").click()
        await expect(page.locator("#questions-empty")).to_be_visible(timeout=20_000)
        await page.click("[data-questions-view='any']")
        await expect(row).to_contain_text("Uploaded 已上传")
        await page.context.close()
    assert errors == []


async def test_a_179_question_customs_refused_is_closed_from_the_panel_and_its_dead_letter_goes(
    browser: Browser, db_dsn: str
) -> None:
    """Customs refuses the upload of a question that can never be answered: refused in the 179 panel, its upload a
    dead letter. The operator closes it there with a reason (the page's CSRF token): it leaves the open view, its
    dead letter runs once more and ends uploading nothing (the dead count back to 0), and the closed view names who
    closed it and why."""
    from tests.test_realtime import PLATFORM_KEY, platforms

    wrong = RsaSha1Key.from_pem(*generate_test_key("rsa", "not the platform's key"))
    errors: list[str] = []
    async with asyncio.timeout(60), running_stack(db_dsn, realtime=platforms(),
                                                  platform_keys={samples.EBP_CODE: wrong}) as stack:
        stack.sandbox.config.realtime_certs = [PLATFORM_KEY.certificate_der]
        feed = stack.app[CONSOLE].feed
        assert feed is not None
        feed.interval = 0.2
        page = await new_page(browser, errors)
        await sign_in(page, stack.base, ADMIN)
        await page.wait_for_url(stack.base + "/ops")
        await page.wait_for_selector("#live[data-state='live']")
        s = fwd_shipment(449)
        order_no = s.order_doc["orderNo"]
        r = await stack.client.request("POST", "/v1/payment-data", json_body=samples.payment_data(s))
        assert r.status == 201, r.body
        await stack.sandbox.sandbox.ask_payment_data(samples.EBP_CODE, order_no)
        row = page.locator("#questions-table tbody tr").first
        await expect(row).to_contain_text("Refused by customs 海关拒收", timeout=20_000)
        await expect(page.locator("#kpi-dead")).to_have_text("1", timeout=20_000)
        uploads = len(stack.sandbox.sandbox.realtime_uploads)

        await row.get_by_role("button", name=re.compile("^Close question")).click()
        reason = row.locator("form.close-form input[name=reason]")
        await expect(reason).to_be_focused()
        await reason.fill("an order of the platform's test shop: customs' own test")
        await page.locator("#questions-panel").screenshot(path=shot("browser-179-close.png"))
        await row.locator("form.close-form button[type=submit]").click()
        await expect(page.locator("#questions-empty")).to_be_visible()
        await expect(page.locator("#kpi-dead")).to_have_text("0", timeout=20_000)  # replayed, then done
        [job] = await stack.fetch("SELECT state FROM jobs WHERE kind = 'realtime_upload'")
        assert job["state"] == "done" and len(stack.sandbox.sandbox.realtime_uploads) == uploads
        await page.click("[data-questions-view='closed']")
        await expect(row).to_contain_text("Closed 已关闭 · admin")
        await expect(row).to_contain_text("an order of the platform's test shop: customs' own test")
        await expect(row).to_contain_text("Refused by customs 海关拒收")  # what became of it before
        assert await row.locator("button").count() == 0  # neither Replay nor Close for a closed question
        await page.context.close()
    assert errors == []


async def test_the_unmatched_receipts_panel_shows_what_customs_said_and_closes_one_for_good(
    browser: Browser, site: Site
) -> None:
    """A receipt the gateway cannot match appears live in the unmatched receipts' panel, newest first, with what customs
    said: its type, keys, status, returnInfo and time, and how it came. Close asks why (nothing sent without a reason;
    Cancel leaves it open), then closes it with the page's token: it leaves the open view at once — and from another
    operator's open console too — and the closed view shows who closed it, when and why."""
    errors: list[str] = []
    async with asyncio.timeout(60):
        page = await live_console(browser, site, errors)
        other = await live_console(browser, site, errors)
        await expect(page.locator("#unmatched-empty")).to_contain_text("Every receipt customs sent found its document")
        await page.evaluate("window.__noReload = 'still here'")
        for n, pay_id in enumerate(("filed-elsewhere-1", "filed-elsewhere-2")):
            xml = build_receipt("CEB412", {"guid": new_guid(), "payCode": "4601260P01", "payTransactionId": pay_id,
                                           "returnStatus": "2", "returnTime": f"2026120610000000{n}",
                                           "returnInfo": "新增申报成功 filed by another broker"})  # fmt: skip
            reply = await site.api.request("POST", "/v1/receipts", data=xml, content_type="application/xml")
            assert [r["outcome"] for r in reply.body["receipts"]] == ["unmatched"], reply.body
        rows = page.locator("#unmatched-table tbody tr")
        await expect(rows).to_have_count(2)
        row = rows.first  # newest first
        await expect(row).to_contain_text("filed-elsewhere-2")
        text = await row.inner_text()
        for said in ("CEB412", "payTransactionId", "4601260P01", "新增申报成功 filed by another broker",
                     "2026-12-06 10:00:00", "http"):
            assert said in text, (said, text)
        await expect(other.locator("#unmatched-table tbody tr")).to_have_count(2)

        close = row.get_by_role("button", name="Close receipt", exact=False)
        await close.click()
        form = row.locator("form.close-form")
        await form.get_by_role("button", name="Cancel 取消").click()
        await expect(form).to_have_count(0)
        await expect(close).to_be_focused()
        await close.click()
        await form.locator("button[type=submit]").click()  # no reason: the form asks for one, nothing is sent
        await expect(rows).to_have_count(2)
        async with site.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM receipts WHERE closed_at IS NOT NULL") == 0
        await form.locator("input[name=reason]").fill("a result of an application another broker filed")
        await page.locator("#unmatched-panel").screenshot(path=shot("browser-unmatched-close.png"))
        await form.locator("button[type=submit]").click()
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("filed-elsewhere-1")
        await expect(other.locator("#unmatched-table tbody tr")).to_have_count(1)  # the other console, live
        await page.click("[data-unmatched-view=closed]")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("filed-elsewhere-2")
        await expect(rows.first).to_contain_text("Closed 已关闭 · admin")
        await expect(rows.first).to_contain_text("a result of an application another broker filed")
        assert await page.evaluate("window.__noReload") == "still here"
        await page.context.close()
        await other.context.close()
    assert errors == []


async def test_an_open_shipment_page_shows_a_warehouse_callback_as_it_comes(browser: Browser, site: Site) -> None:
    """A warehouse's callback changes no shipment row; the live feed still names the shipment whose document it
    reports on, and the open page shows it without a reload."""
    errors: list[str] = []
    async with asyncio.timeout(60):
        s = new_shipment(431)
        await submit(site.api, s)
        page = await live_console(browser, site, errors)
        await page.goto(f"{site.base}/ops#/shipment?{urlencode(key_of(s))}")
        await page.wait_for_selector(".timeline li.document")
        inventory = s.inventory_doc
        body = {"schema": "cbec.warehouse-callback.v1", "orderId": warehouse.order_id(s.inventory["guid"], 1),
                "warehouseOrderNo": "WH-LIVE-1",
                "direction": "outbound", "status": "picked", "reason": None, "occurredAt": "2026-12-06T10:00:00+08:00",
                "reference": {"messageType": "CEB621", "guid": inventory["guid"], "orderNo": inventory["orderNo"],
                              "ebpCode": inventory["ebpCode"]}}  # fmt: skip
        reply = await site.api.request("POST", "/v1/warehouse/callbacks", json_body=body)
        assert reply.status == 200 and reply.body["linked"], reply.body
        await expect(page.locator(".timeline")).to_contain_text("Warehouse 仓库 WH-LIVE-1 · picked 已拣货")
        await expect(page.locator(".facts")).to_contain_text("WH-LIVE-1 picked 已拣货")
        await page.context.close()
    assert errors == []


async def test_the_warehouse_panel_shows_callbacks_on_no_shipment_and_refused_orders_as_they_come(
    browser: Browser, site: Site
) -> None:
    """The callbacks that need a look appear live in the warehouse panel: one no shipment shows — its reference names
    no document the gateway holds, or its orderId is not the one the gateway gave that document's order — with the
    warehouse, the order, the status and why; and, in the panel's other view, an order the warehouse refused, with a
    link to its shipment."""
    errors: list[str] = []
    async with asyncio.timeout(60):
        s = new_shipment(433)
        await submit(site.api, s)
        page = await live_console(browser, site, errors)
        await page.evaluate("window.__noReload = 'still here'")
        inventory = s.inventory_doc

        async def callback(order_id: str, guid: str, status: str = "picked", linked: bool = False) -> None:
            body = {"schema": "cbec.warehouse-callback.v1", "orderId": order_id, "warehouseOrderNo": "WH-LOST-1",
                    "direction": "outbound", "status": status, "reason": "no stock 无库存" if status == "rejected"
                    else None, "occurredAt": "2026-12-06T10:00:00+08:00",
                    "reference": {"messageType": "CEB621", "guid": guid}}  # fmt: skip
            reply = await site.api.request("POST", "/v1/warehouse/callbacks", json_body=body)
            assert reply.status == 200 and reply.body["linked"] is linked, reply.body

        await callback("ORDER-NOWHERE-1", "no-such-document")
        row = page.locator("#warehouse-table tbody tr").first
        await expect(row).to_contain_text("ORDER-NOWHERE-1")
        text = await row.inner_text()
        assert "picked 已拣货" in text and "WH-LOST-1" in text and "no-such-document" in text, text
        assert "names no document the gateway holds" in text, text
        await expect(page.locator("#warehouse-empty")).to_be_hidden()
        await callback(warehouse.order_id(s.order["guid"], 1), inventory["guid"])  # a document held, another order
        await expect(row).to_contain_text("not the orderId the gateway gave")
        await page.locator("#warehouse-panel").screenshot(path=shot("browser-unlinked-callbacks.png"))

        await page.click("[data-warehouse-view=refused]")
        await expect(page.locator("[data-warehouse-view=refused]")).to_have_attribute("aria-pressed", "true")
        await callback(warehouse.order_id(s.inventory["guid"], 1), inventory["guid"], "rejected", linked=True)
        await expect(row).to_contain_text("rejected 已拒绝")
        text = await row.inner_text()
        assert "no stock 无库存" in text and "ORDER-NOWHERE-1" not in text, text
        assert await page.evaluate("window.__noReload") == "still here"
        await row.locator("a").click()  # to the shipment whose order the warehouse refused
        await expect(page.locator(".facts")).to_contain_text("WH-LOST-1 rejected 已拒绝")
        await page.context.close()
    assert errors == []


async def test_the_warehouse_panel_shows_at_once_a_parcel_the_warehouse_sent_after_its_cancel(
    browser: Browser, db_dsn: str
) -> None:
    """Customs concluded the cancellation of a released parcel; the sandbox's warehouse takes the cancel of its order
    but delivers the parcel all the same. Live, the warehouse panel counts a cancel needing a look on its button and
    lists it (why, the order, the cancel's reason and answer, the shipment); the shipment page says so in its facts
    and timeline (the cancel asked, the callback after it); an operator closes it with a reason, and it leaves the
    list and the count."""
    from tests.test_e2e import cancelled_after_shipping

    errors: list[str] = []
    async with asyncio.timeout(90), running_stack(db_dsn, sandbox_config={"warehouse_cancel": "ship"}) as stack:
        page = await new_page(browser, errors)
        await sign_in(page, stack.base, ADMIN)
        await page.wait_for_url(stack.base + "/ops")
        await page.wait_for_selector("#live[data-state='live']")
        badge = page.locator("#warehouse-cancels-count")
        await expect(badge).to_have_text("")
        await cancelled_after_shipping(stack, 151)
        await expect(badge).to_have_text("1", timeout=20_000)  # whatever view the panel shows
        await page.click("[data-warehouse-view=cancels]")
        await expect(page.locator("#warehouse-table thead")).to_contain_text("Asked 请求取消")
        row = page.locator("#warehouse-table tbody tr").first
        await expect(row).to_contain_text("went on after the cancel 取消后仍有进展")
        text = await row.inner_text()
        for part in ("delivered 已签收", "CEB623 concluded by customs: 买家取消订单", "delivered 已送达",
                     "not confirmed 未确认", "outbound"):
            assert part in text, text
        await page.locator("#warehouse-panel").screenshot(path=shot("browser-warehouse-cancels.png"))
        await row.locator("a").click()  # the shipment of the parcel
        await expect(page.locator(".facts")).to_contain_text("⚠ cancel: went on after the cancel 取消后仍有进展")
        timeline = page.locator(".timeline")
        await expect(timeline.locator("[data-warehouse-event=delivered]")).to_contain_text(
            "delivered 已签收 ⚠ after the cancel 取消后")
        await expect(timeline.locator("[data-warehouse-cancel]")).to_contain_text("cancel asked 已请求取消 ⚠")
        assert "after the cancel" not in await timeline.locator("[data-warehouse-event=shipped]").inner_text()
        await page.screenshot(path=shot("browser-shipped-after-cancel.png"), full_page=True)

        await page.goto(f"{stack.base}/ops#/")
        await page.click("[data-warehouse-view=cancels]")
        await row.locator("button.close").click()
        await page.fill("#warehouse-table input[name=reason]", "carrier called the parcel back 已召回")
        await page.locator("#warehouse-table form.close-form button[type=submit]").click()
        await expect(page.locator("#warehouse-empty")).to_have_text("No cancel needs a look. 取消请求均无异常")
        await expect(badge).to_have_text("", timeout=20_000)
        await page.context.close()
    assert errors == []


async def test_the_warehouse_panel_links_an_inbound_order_it_refused_to_its_delivery(
    browser: Browser, db_dsn: str
) -> None:
    """The site's warehouse refuses the inbound order made from a delivery (入库明细单, CEB711): the panel's refused
    view names the delivery (its B/L, how many parcels) and links the shipments of its parcels, whose page shows it."""
    from gateway.config import DEFAULT_ROUTES, RouteSettings
    from tests.siteutil import BILL_NO, delivery_xml, on_one_bill, waybill_nos

    errors: list[str] = []
    routed = {"routes": (*DEFAULT_ROUTES, RouteSettings(("CEB711",), ("warehouse",)))}
    async with asyncio.timeout(60), running_stack(db_dsn, forwarding=routed) as stack:
        s = fwd_shipment(406)
        carrier = on_one_bill([s])
        for payload in fwd_legs(s):
            await stack.submit(payload)
        reply = await stack.client.post_xml(delivery_xml(carrier, [*waybill_nos([s]), "REJECT-000000002"]))
        assert reply.status == 202, reply.body
        await stack.wait_sql("SELECT count(*) = 1 FROM warehouse_events WHERE status = 'rejected'", timeout=20)
        page = await new_page(browser, errors)
        await sign_in(page, stack.base, ADMIN)
        await page.wait_for_url(stack.base + "/ops")
        await page.click("[data-warehouse-view=refused]")
        row = page.locator("#warehouse-table tbody tr").first
        await expect(row).to_contain_text(f"Delivery 入库明细单 · B/L {BILL_NO} · 2 parcels 件")
        assert "inbound" in await row.inner_text()
        await row.locator("a", has_text=s.order_doc["orderNo"]).click()
        await expect(page.locator(".timeline")).to_contain_text("CEB711 入库明细单")
        await page.context.close()
    assert errors == []


async def test_the_banner_says_when_the_signing_certificate_expired_and_clears_once_it_is_renewed(
    browser: Browser, site: Site
) -> None:
    """Past its certificate's end the gateway signs nothing and JSON declarations are 503s: the operators' header says
    so, live; a certificate within 30 days of its end is a reminder with the days left; a renewed one put in force (as
    SIGHUP does) clears the banner without a reload of the page. A key on a UKey: the card refusing, or its control out
    of reach, is said with the reason."""
    pipeline = site.app[PIPELINE]
    before = pipeline.signer
    errors: list[str] = []

    def signer(days: int) -> Signer:
        return Signer(RsaSha1Key.from_pem(*generate_test_key("rsa", f"agent {days}", days=days)))

    card = await start_ukey(RsaSha1Key.from_pem(*generate_test_key("rsa", "agent's UKey")))
    try:
        async with asyncio.timeout(60):
            pipeline.signer = signer(0)  # valid from yesterday, until yesterday
            page = await live_console(browser, site, errors)
            banner = page.locator("#banner")
            await expect(banner).to_be_visible()
            await expect(banner).to_contain_text("Signing certificate expired")
            await expect(banner).to_contain_text("JSON declarations refused (503) 签名证书已过期")
            await page.screenshot(path=shot("console-signing-expired.png"))
            pipeline.signer = signer(11)  # ten days left, less the seconds since it was made
            await expect(banner).to_contain_text("Signing certificate expires in 9 d")
            await expect(banner).to_contain_text("签名证书即将过期")
            pipeline.signer = signer(400)
            await expect(banner).to_be_hidden()
            await page.screenshot(path=shot("console-signing-renewed.png"))
            # the key on a UKey (gateway.ukey): a card refusing, then its control out of reach
            pipeline.signer = ukey = UKeySigner(card.url, "00000000")
            with pytest.raises(SigningUnavailable):
                await ukey.sign(etree.fromstring(render(json.loads(json.dumps(new_shipment(91).inventory,
                                                                              default=str)))))  # fmt: skip
            await expect(banner).to_contain_text("Signing UKey refused")
            await expect(banner).to_contain_text("口令错误")
            await card.stop()
            pipeline.signer = gone = UKeySigner(card.url, "88888888")
            with pytest.raises(SigningUnavailable):
                await gone.read_certificate()
            await expect(banner).to_contain_text(f"Signing UKey unreachable ({card.url})")
            await page.screenshot(path=shot("console-signing-ukey-unreachable.png"))
            assert errors == []
    finally:
        pipeline.signer = before
        await card.stop()


async def test_the_oldest_awaited_receipt_counts_on_while_the_feed_is_quiet(browser: Browser, site: Site) -> None:
    errors: list[str] = []
    async with site.pool.acquire() as conn:  # one document sent three minutes ago, as MARK_SENT lists it
        await conn.execute("INSERT INTO receipts_awaited (document_id, sent_at, awaited_since)"
                           " VALUES (1, now() - interval '3 min', now() - interval '3 min')")  # fmt: skip
    async with asyncio.timeout(60):
        page = await live_console(browser, site, errors)
        await expect(page.locator("#awaited")).to_have_text(re.compile(r"^1 · oldest 3 min"))
        await expect(page.locator("details.awaited")).not_to_have_class(re.compile(r"\bwarn\b"))
        # nothing moves, so the feed sends nothing: the page counts the wait on by itself
        first = await page.locator("#awaited").text_content()
        await expect(page.locator("#awaited")).not_to_have_text(first or "", timeout=8000)
        await page.context.close()
    assert errors == []


async def test_a_finding_whose_sides_agree_shows_the_value_once_and_what_is_wrong(browser: Browser, site: Site) -> None:
    """A waybill of an orderNo two platforms use (recon.waybill_ambiguous): its two sides hold the same orderNo, which
    the list showed as "O1 ≠ O1"."""
    mine = new_shipment(431)
    order_no = mine.order_doc["orderNo"]
    theirs = new_shipment(432, ebp_code="46012609ZZ", order_no=order_no)
    await submit(site.api, mine, "CEB311", "CEB511")
    await submit(site.api, theirs, "CEB311")
    errors: list[str] = []
    async with asyncio.timeout(60):
        page = await new_page(browser, errors)
        await sign_in(page, site.base, ADMIN)
        await page.wait_for_url(site.base + "/ops")
        await list_by_state(page, "incomplete")
        rows = page.locator(f"#list-table tbody tr[data-order='{order_no}']")
        await expect(rows).to_have_count(3)  # each platform's shipment and the orderNo's waybill-only one
        findings = rows.locator(".finding")
        texts = await findings.all_inner_texts()
        assert len(texts) == 3 and all("≠" not in t and "recon.waybill_ambiguous" in t for t in texts), texts
        assert await findings.locator(".val").all_inner_texts() == [order_no] * 3  # the value once
        assert all("46012609ZZ" in t for t in await findings.locator(".why").all_inner_texts())  # what is wrong
        docs = sorted([tuple(await f.locator(".doc").all_inner_texts()) for f in await findings.all()])
        assert docs == [("CEB311 订单", "CEB511 运单")] * 2 + [("CEB511 运单",)]  # the waybill-only one: the waybill
        await page.screenshot(path=shot("browser-shared-finding.png"))
        await page.context.close()
    assert errors == []


def _same_mask_other_id(id_number: str) -> str:
    """Another valid ID of the same region and the same last four characters, born on another day: the list's mask
    (region ******** last four) shows the two alike."""
    born = date(int(id_number[6:10]), int(id_number[10:12]), int(id_number[12:14]))
    for days in range(1, 4000):
        first17 = id_number[:6] + (born - timedelta(days=days)).strftime("%Y%m%d") + id_number[14:17]
        if samples.id_check_digit(first17) == id_number[17]:
            return first17 + id_number[17]
    raise AssertionError("no such ID number")


async def test_a_mismatch_the_mask_shows_alike_still_reads_as_a_mismatch(browser: Browser, site: Site) -> None:
    """Two ID numbers differing only in the birth date are masked alike in the list: the finding must not read as
    one agreeing value (the shared view is for findings whose sides hold one value by what they say)."""
    s = new_shipment(451)
    order_no, mine = s.order_doc["orderNo"], s.order_doc["buyerIdNumber"]
    s.payment_doc["payerIdNumber"] = _same_mask_other_id(mine)  # the payer is not the order's buyer (spec §6.4)
    await submit(site.api, s, "CEB311", "CEB411")
    errors: list[str] = []
    async with asyncio.timeout(60):
        page = await new_page(browser, errors)
        await sign_in(page, site.base, ADMIN)
        await page.wait_for_url(site.base + "/ops")
        await list_by_state(page, "any")
        finding = page.locator(f"#list-table tbody tr[data-order='{order_no}'] .finding", has_text="buyerIdNumber")
        await expect(finding).to_have_count(1)
        text = await finding.inner_text()
        await page.context.close()
    assert "recon.buyer_payer_mismatch" in text and "≠" in text and "masks" in text, text
    assert errors == []


async def _listed(pool: asyncpg.Pool, *, mismatched: int, incomplete: int) -> str:
    """Shipments for the list, each a second older than the one before (MM0000…, II0000…, the last the newest); the
    insert statement returned, for one more."""
    insert = ("INSERT INTO shipments (ebp_code, order_no, state, updated_at)"
              " VALUES ('46012609BQ', $1, $2, now() - make_interval(secs => $3))")  # fmt: skip
    await pool.executemany(insert, [(f"MM{i:04d}", "mismatched", 600 - i) for i in range(mismatched)])
    await pool.executemany(insert, [(f"II{i:04d}", "incomplete", 600 - i) for i in range(incomplete)])
    return insert


async def test_load_more_survives_live_updates_and_keeps_the_filters_it_was_loaded_with(
    browser: Browser, site: Site
) -> None:
    """A live reload kept page 1 only (the rows loaded by *Load more* vanished), and *Load more* read the form as it
    was being edited rather than the filters of the list on screen."""
    insert = await _listed(site.pool, mismatched=60, incomplete=5)
    errors: list[str] = []
    async with asyncio.timeout(60):
        page = await live_console(browser, site, errors)
        await expect(page.locator("#list-count")).to_have_text("50+")
        await page.click("#list-more")
        await expect(page.locator("#list-count")).to_have_text("60")
        await page.select_option("#filters select[name=state]", "any")  # edited, not searched
        await site.pool.execute(insert, "MMNEW", "mismatched", 0)
        await page.wait_for_selector("#list-table tbody tr[data-order='MMNEW']")
        # as many rows as were loaded (not page 1's 50), the newest first; the oldest one moved to the next page
        await expect(page.locator("#list-count")).to_have_text("60+")
        assert await page.inner_text("#list-title") == "Mismatches 三单对碰不一致"
        assert await page.locator("#list-table tbody tr[data-order^='II']").count() == 0
        await page.context.close()
    assert errors == []



async def test_the_list_downloads_as_csv_with_the_filters_it_was_loaded_with(browser: Browser, site: Site) -> None:
    """The list's CSV link downloads every shipment of the list on screen (not only the pages loaded), with the
    filters it was searched with, as a file the browser saves."""
    await _listed(site.pool, mismatched=55, incomplete=3)
    errors: list[str] = []
    async with asyncio.timeout(60):
        page = await live_console(browser, site, errors)
        await expect(page.locator("#list-count")).to_have_text("50+")
        async with page.expect_download() as fetched:
            await page.click("#list-csv")
        download = await fetched.value
        assert re.fullmatch(r"shipments-mismatched-\d{8}T\d{6}Z\.csv", download.suggested_filename)
        text = Path(await download.path()).read_text(encoding="utf-8-sig")
        orders = [line.split(",")[2] for line in text.splitlines()[1:]]
        assert sorted(orders) == [f"MM{i:04d}" for i in range(55)]  # all 55, not the 50 shown
        await list_by_state(page, "incomplete")
        await expect(page.locator("#list-count")).to_have_text("3")
        async with page.expect_download() as fetched:
            await page.click("#list-csv")
        text = Path(await (await fetched.value).path()).read_text(encoding="utf-8-sig")
        assert [line.split(",")[2] for line in text.splitlines()[1:]] == ["II0002", "II0001", "II0000"]  # newest first
        await page.context.close()
    assert errors == []

async def test_console_at_1366x768_with_realistic_data(browser: Browser, site: Site) -> None:
    errors: list[str] = []
    async with asyncio.timeout(120):
        made = await seed_realistic(site.api, site.pool, spread_minutes=55)
        page = await new_page(browser, errors)
        await sign_in(page, site.base, ADMIN)
        await page.wait_for_url(site.base + "/ops")
        await expect(page.locator("#kpi-mismatched")).to_have_text(str(len(made["mismatched"])))
        await page.wait_for_selector(f"#list-table tbody tr[data-order='{made['mismatched'][0]}']")
        await page.wait_for_selector("#chart svg path.series.accepted")
        await page.wait_for_selector("#queue-table tbody tr")
        awaited = await site.pool.fetchval("SELECT count(*) FROM receipts_awaited")
        assert awaited == 4  # seed_realistic's demo: four legs sent twelve minutes ago, no receipt yet
        await expect(page.locator("#awaited")).to_have_text(re.compile(r"^4 · oldest 12 min"))
        await expect(page.locator("details.awaited")).to_have_class(re.compile(r"\bwarn\b"))
        # which documents: opened, the four, the longest waiting first, each linking its shipment
        await page.click("#awaited-details summary")
        rows = page.locator("#awaited-table tbody tr")
        await expect(rows).to_have_count(4)
        assert "12 min" in await rows.first.inner_text()
        order_no = (await rows.first.locator("a").inner_text()).strip()
        href = await rows.first.locator("a").get_attribute("href") or ""
        assert href.startswith("#/shipment?") and f"orderNo={order_no}" in href, href
        await page.click("#awaited-details summary")  # closed again for the screenshot below
        await page.wait_for_selector("#live[data-state='live']")
        await page.wait_for_timeout(1500)  # let the highlights of fresh figures fade
        # usable on a laptop: nothing wider than the window
        assert await page.evaluate("document.documentElement.scrollWidth") <= 1366
        path = shot("console-1366x768.png")
        await page.screenshot(path=path)
        assert Path(path).stat().st_size < 300_000
        if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
            DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS_SCREENSHOT)
        await page.screenshot(path=shot("console-full.png"), full_page=True)
        await page.context.close()
    assert errors == []


async def test_the_live_feed_says_the_database_is_away_and_comes_back_with_it(browser: Browser, pg_dsn: str) -> None:
    """A database outage ended the live feed for good: the open stream broke on its session check, the browser's
    reconnect was answered 503, and EventSource never tries again after an HTTP error. Now the stream stays and says
    the database is away (the banner), a stream that ended anyway is opened again by the page, and once the database
    takes connections again the banner clears and changes appear live again, without a reload."""
    errors: list[str] = []
    streams: list[str] = []
    async with fresh_database(pg_dsn) as dsn:
        name = dsn.rsplit("/", 1)[1]
        pool = await db.create_pool(dsn, min_size=0, max_size=4)
        app = build_app(pool, poll_interval=0.3)
        runner, base = await start(app)
        admin = await asyncpg.connect(pg_dsn)

        async def database(up: bool) -> None:
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(up).lower()}')
            if not up:
                await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)

        try:
            async with asyncio.timeout(90), aiohttp.ClientSession() as http:
                site = Site(base, Client(http, base), pool, app)
                page = await live_console(browser, site, errors)
                page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/ops/api/events") else None)
                banner = page.locator("#banner")
                await expect(banner).to_be_hidden()

                await database(False)
                await expect(banner).to_contain_text("Database unavailable 数据库不可用")
                await page.wait_for_timeout(2500)  # several of the stream's session checks
                assert streams == []  # the same stream, kept open
                await expect(page.locator("#live")).to_have_attribute("data-state", "live")

                # a stream that ends while the database is away (a proxy's timeout, a restart): its reconnect is
                # answered 503, and the page opens another one itself
                feed = app[CONSOLE].feed
                assert feed is not None
                for sub in list(feed.subscribers):
                    sub.close()
                for _ in range(150):
                    if len(streams) >= 2:  # the browser's own reconnect (refused), then the page's
                        break
                    await asyncio.sleep(0.1)
                assert len(streams) >= 2, streams
                await expect(banner).to_contain_text("Database unavailable 数据库不可用")

                await database(True)
                await expect(banner).to_be_hidden(timeout=20_000)
                await expect(page.locator("#live")).to_have_attribute("data-state", "live")
                s = samples.broken(new_shipment(470), "amount_mismatch")
                await submit(site.api, s)
                await page.wait_for_selector(f"#list-table tbody tr[data-order='{s.order_doc['orderNo']}']")
                await page.context.close()
        finally:
            await database(True)
            await admin.close()
            await asyncio.wait_for(runner.cleanup(), 10)
            await pool.close()
    # what the browser logs of the refused requests (503) while the database was away
    assert [e for e in errors if "503" not in e] == [], errors


async def test_a_listed_shipment_with_findings_still_says_what_it_is_missing(browser: Browser, site: Site) -> None:
    """The list said what was missing only of a shipment without findings: a mismatched order and payment whose waybill
    and inventory never came read as if only the amount were wrong."""
    s = samples.broken(new_shipment(471), "amount_mismatch")
    await submit(site.api, s, "CEB311", "CEB411")
    errors: list[str] = []
    async with asyncio.timeout(60):
        page = await live_console(browser, site, errors)
        await list_by_state(page, "any")
        row = page.locator(f"#list-table tbody tr[data-order='{s.order_doc['orderNo']}']")
        await expect(row.locator(".finding")).not_to_have_count(0)
        await expect(row).to_contain_text("missing 缺少: waybill 运单, inventory 清单")
        await page.context.close()
    assert errors == []


async def test_one_long_value_wraps_rather_than_widen_the_page(browser: Browser, site: Site) -> None:
    """A finding's value of a few hundred characters without a space (an address pasted twice, a seller's junk) made
    the list 3,000 px wide: its sides did not wrap."""
    long_value = "浙江省杭州市余杭区" * 20 + "X" * 200
    finding = {"code": "recon.address_mismatch", "field": "consigneeAddress", "blocking": True,
               "message": "the addresses differ",
               "left": {"doc": "CEB311", "path": "/CEB311Message/Order/OrderHead/consigneeAddress",
                        "value": long_value},
               "right": {"doc": "CEB511", "path": "/CEB511Message/Logistics/LogisticsHead/consigneeAddress",
                         "value": long_value + "1"}}  # fmt: skip
    await site.pool.execute("INSERT INTO shipments (ebp_code, order_no, state, findings) VALUES"
                            " ('46012609BQ', 'LONG-1', 'mismatched', $1)", [finding])  # fmt: skip
    errors: list[str] = []
    async with asyncio.timeout(60):
        page = await live_console(browser, site, errors)
        await page.wait_for_selector("#list-table tbody tr[data-order='LONG-1'] .finding")
        assert await page.evaluate("document.documentElement.scrollWidth") <= 1366
        await page.click("#list-table tbody tr[data-order='LONG-1'] a")
        await page.wait_for_selector("table.findings")
        assert await page.evaluate("document.documentElement.scrollWidth") <= 1366
        await page.context.close()
    assert errors == []


async def test_the_shipment_page_names_buyer_and_consignee_without_the_order(browser: Browser, site: Site) -> None:
    """The page took the buyer and the consignee from the order only: a shipment whose order has not come showed
    neither, though its inventory names the buyer and its waybill the consignee."""
    s = new_shipment(472)
    await submit(site.api, s, "CEB511", "CEB621")
    errors: list[str] = []
    async with asyncio.timeout(60):
        page = await live_console(browser, site, errors)
        await page.goto(f"{site.base}/ops#/shipment?{urlencode(key_of(s))}")
        facts = page.locator(".facts")
        await expect(facts).to_contain_text(f"Buyer 订购人{s.inventory_doc['buyerName']}")
        await expect(facts).to_contain_text(f"Consignee 收货人{s.waybill_doc['consignee']}")
        await page.context.close()
    assert errors == []


async def test_the_customs_chips_list_their_shipments_each_row_with_its_customs_status(
    browser: Browser, site: Site
) -> None:
    """The shipments customs rejected, or whose delivery failed, could not be listed: the chips counting them led
    nowhere, the list had no customs-status filter and its rows did not say the status."""
    insert = "INSERT INTO shipments (ebp_code, order_no, state, customs_status) VALUES ('46012609BQ', $1, $2, $3)"
    await site.pool.executemany(insert, [("CR1", "matched", "rejected"), ("CF1", "incomplete", "failed"),
                                         ("CP1", "mismatched", "pending"),
                                         ("CC1", "matched", "cancelled")])  # fmt: skip
    errors: list[str] = []
    async with asyncio.timeout(60):
        page = await live_console(browser, site, errors)
        rows = page.locator("#list-table tbody tr")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("customs 海关 pending 未申报")
        await page.click("#customs-chips [data-customs-filter=rejected]")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-order", "CR1")
        await expect(rows.first.locator(".customs-badge")).to_have_text("customs 海关 rejected 被拒")
        await expect(page.locator("#list-title")).to_contain_text("customs 海关 rejected")
        await expect(page.locator("#filters select[name=customs_status]")).to_have_value("rejected")
        await page.click("#customs-chips [data-customs-filter=failed]")
        await expect(rows.first).to_have_attribute("data-order", "CF1")
        await expect(rows).to_have_count(1)
        await page.click("#customs-chips [data-customs-filter=cancelled]")  # customs cancelled its inventory
        await expect(rows.first).to_have_attribute("data-order", "CC1")
        await expect(rows.first.locator(".customs-badge")).to_have_text("customs 海关 cancelled 已撤销")
        await expect(page.locator("#filters select[name=customs_status]")).to_have_value("cancelled")
        await page.click("#filters button[type=reset]")  # cleared: the mismatches of any customs status
        await expect(rows.first).to_have_attribute("data-order", "CP1")
        await page.context.close()
    assert errors == []


async def test_a_list_answer_overtaken_by_a_newer_load_does_not_draw_the_list(browser: Browser, site: Site) -> None:
    """The list filtered (the failed chip), then cleared before that load answered: the slower answer came last and
    drew the failed shipments under the cleared filters, for good (seen when the machine was busy)."""
    insert = "INSERT INTO shipments (ebp_code, order_no, state, customs_status) VALUES ('46012609BQ', $1, $2, $3)"
    await site.pool.executemany(insert, [("SF1", "incomplete", "failed"), ("SP1", "mismatched", "pending")])
    errors: list[str] = []
    asked = asyncio.Event()

    async def slow(route: Route) -> None:  # the filtered load answers late
        asked.set()
        await asyncio.sleep(1.5)
        await route.continue_()

    async with asyncio.timeout(60):
        page = await live_console(browser, site, errors)
        rows = page.locator("#list-table tbody tr")
        await expect(rows.first).to_have_attribute("data-order", "SP1")
        await page.route("**/ops/api/shipments?*customs_status=failed*", slow)
        await page.click("#customs-chips [data-customs-filter=failed]")
        await asyncio.wait_for(asked.wait(), 10)
        await page.click("#filters button[type=reset]")
        await expect(rows.first).to_have_attribute("data-order", "SP1")
        await asyncio.sleep(2)  # the filtered answer has come meanwhile
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-order", "SP1")
        await page.context.close()
    assert errors == []


async def test_a_dead_letter_beyond_the_first_fifty_is_found_and_replayed(browser: Browser, site: Site) -> None:
    """Only the newest 50 dead letters were shown, with no more to load and no endpoint to choose: an inspection dead
    letter behind 55 of customs could not be reached, let alone replayed."""
    s = new_shipment(473)
    await submit(site.api, s, "CEB621")
    guid = await site.pool.fetchval("SELECT guid FROM messages WHERE message_type = 'CEB621'")
    inspection = await make_dead_letter(site.pool, endpoint="inspection", kind="CEB621", guid=guid)
    for _ in range(55):
        await make_dead_letter(site.pool)
    errors: list[str] = []
    async with asyncio.timeout(60):
        page = await live_console(browser, site, errors)
        rows = page.locator("#dead-table > tbody > tr")
        await expect(rows).to_have_count(50)
        await page.click("#dead-more")
        await expect(rows).to_have_count(56)
        await expect(page.locator("#dead-more")).to_be_hidden()
        await page.select_option("#dead-endpoint", "inspection")
        await expect(rows).to_have_count(1)
        await expect(page.locator("#dead-count")).to_have_text("1")
        row = page.locator(f"#dead-table tbody tr[data-job='{inspection}']")
        await expect(row.locator("a")).to_have_text(s.order_doc["orderNo"])  # its shipment, a link to its page
        await row.locator("button.replay").click()
        await expect(row).to_have_count(0)
        await expect(page.locator("#dead-empty")).to_be_visible()
        await page.select_option("#dead-endpoint", "")
        await expect(rows).to_have_count(50)
        await page.context.close()
    assert errors == []


_CONTRAST = """(el) => {
  if (!el.isConnected) return null;  // drawn anew meanwhile (a live reload): the caller asks again
  const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = (c) => { const [r, g, b] = rgb(c).map((v) => v / 255).map((v) => v <= 0.03928 ? v / 12.92
    : ((v + 0.055) / 1.055) ** 2.4); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  let bg = el;
  while (bg && getComputedStyle(bg).backgroundColor.replace(/\\s/g, "").match(/^rgba\\(.*,0\\)$|transparent/)) {
    bg = bg.parentElement;
  }
  const [a, b] = [lum(getComputedStyle(el).color), lum(bg ? getComputedStyle(bg).backgroundColor : "rgb(255,255,255)")];
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
}"""


async def contrast(locator: Locator) -> float:
    """The contrast ratio of an element's text on its background, asked again while a live reload replaces it."""
    for _ in range(50):
        ratio = await locator.evaluate(_CONTRAST)
        if ratio is not None:
            return float(ratio)
        await asyncio.sleep(0.1)
    raise AssertionError("the element was drawn anew for five seconds on end")


async def test_amber_text_meets_wcag_aa_and_repeated_buttons_have_their_own_names(browser: Browser, site: Site) -> None:
    """The amber of incomplete shipments and warnings was 3.9:1 on its background (AA asks 4.5:1), and every Replay,
    XML and Sent button read alike to a screen reader."""
    s = new_shipment(474)
    await submit(site.api, s, "CEB311", "CEB411")  # incomplete
    dead = [await make_dead_letter(site.pool) for _ in range(2)]
    for _ in range(2):
        bad = xml_of(new_shipment(475).order).replace(b"<ceb:currency>142<", b"<ceb:currency>14<", 1)
        assert (await site.api.post_xml(bad)).status == 422
    errors: list[str] = []
    async with asyncio.timeout(60):
        page = await live_console(browser, site, errors)
        await list_by_state(page, "incomplete")
        badge = page.locator(f"#list-table tbody tr[data-order='{s.order_doc['orderNo']}'] .state.incomplete")
        assert await contrast(badge) >= 4.5
        assert await contrast(page.locator("#kpi-incomplete")) >= 4.5
        for job in dead:
            await expect(page.get_by_role("button", name=f"Replay job #{job} 重发")).to_have_count(1)
        sent = await page.locator("#refused-table .sent-toggle").evaluate_all("bs => bs.map((b) => b.ariaLabel)")
        assert len(sent) == 2 and len(set(sent)) == 2, sent
        await page.goto(f"{site.base}/ops#/shipment?{urlencode(key_of(s))}")
        await page.wait_for_selector(".timeline .xml-toggle")
        names = await page.locator(".timeline .xml-toggle").evaluate_all("bs => bs.map((b) => b.ariaLabel)")
        assert len(names) == 2 and len(set(names)) == 2 and all(n.startswith("XML of CEB") for n in names), names
        await page.context.close()
    assert errors == []


async def test_the_keyboard_focus_survives_live_updates_and_view_changes(browser: Browser, site: Site) -> None:
    """Each live update rebuilt the list and dropped the focus on the page's body, and so did opening a shipment and
    going back: a keyboard user started over from the top every time."""
    insert = await _listed(site.pool, mismatched=5, incomplete=0)
    errors: list[str] = []
    async with asyncio.timeout(60):
        page = await live_console(browser, site, errors)
        link = page.locator("#list-table tbody tr[data-order='MM0002'] td.order a")
        await link.focus()
        await site.pool.execute(insert, "MMNEW", "mismatched", 0)
        await page.wait_for_selector("#list-table tbody tr[data-order='MMNEW']")
        await expect(link).to_be_focused()  # the same shipment's link, in the list made anew
        await page.keyboard.press("Enter")
        await expect(page.locator("#shipment h1")).to_be_focused()
        await page.go_back()
        await expect(link).to_be_focused()
        await site.pool.execute(insert, "MMNEW2", "mismatched", 0)
        await page.wait_for_selector("#list-table tbody tr[data-order='MMNEW2']")
        await expect(link).to_be_focused()
        await page.context.close()
    assert errors == []


async def test_open_panels_and_the_scroll_survive_a_live_change_of_the_shipment(browser: Browser, site: Site) -> None:
    """Each live change of the open shipment drew its page anew: the XML views and attempt histories opened on it
    closed, and the page jumped up as it shrank."""
    errors: list[str] = []
    async with asyncio.timeout(60):
        s = new_shipment(441)
        await submit(site.api, s)
        job_id = await make_forwarded(site.pool, kind="CEB311", guid=s.order["guid"])
        page = await live_console(browser, site, errors)
        await page.goto(f"{site.base}/ops#/shipment?{urlencode(key_of(s))}")
        documents = page.locator(".timeline li.document")
        await expect(documents).to_have_count(4)
        for i in (0, 3):
            await documents.nth(i).locator(".xml-toggle").click()
        await expect(page.locator(".timeline pre.xml")).to_have_count(2)
        await page.locator(".timeline details.history summary").click()
        await expect(page.locator(".timeline details.history table")).to_contain_text("ok")
        as_stored = page.locator(".timeline .xml-block button").first
        await as_stored.click()  # the first XML as stored, the focus on its button
        await expect(as_stored).to_have_text("indented 缩进")
        await page.evaluate("window.scrollTo(0, 600)")
        assert await page.evaluate("window.scrollY") == 600

        receipt = build_receipt("CEB312", {
            "guid": s.order_doc["guid"], "ebpCode": s.order_doc["ebpCode"], "ebcCode": s.order_doc["ebcCode"],
            "orderNo": s.order_doc["orderNo"], "returnStatus": "120", "returnTime": return_time(),
            "returnInfo": "新增申报成功",
        })  # fmt: skip
        assert (await site.api.post_xml(receipt)).status == 202
        await expect(page.locator(".timeline")).to_contain_text("回执 CEB312 · 120")  # drawn anew

        assert await page.locator(".timeline .xml-toggle[aria-expanded='true']").count() == 2
        await expect(page.locator(".timeline pre.xml")).to_have_count(2)
        assert await documents.nth(0).locator("pre.xml").count() == 1
        assert await documents.nth(3).locator("pre.xml").count() == 1
        history = page.locator(f".timeline details.history[data-keep='job {job_id}']")
        assert await history.evaluate("d => d.open")
        await expect(as_stored).to_have_text("indented 缩进")  # as it was left, not read again
        await expect(as_stored).to_be_focused()
        assert await page.evaluate("window.scrollY") == 600
        await page.context.close()
    assert errors == []


async def test_open_panels_survive_a_live_reload_of_the_refused_messages_and_dead_letters(
    browser: Browser, site: Site
) -> None:
    """A new refusal or dead letter reloaded its table and closed what an operator had open there: what a refused
    message sent, a dead letter's attempt history."""
    errors: list[str] = []
    async with asyncio.timeout(60):
        dead = await make_dead_letter(site.pool, guid="KEEP-0001")
        page = await live_console(browser, site, errors)
        order = samples.render_shipment(new_shipment(442))["CEB311"].replace(b"ceb:orderNo>", b"ceb:orderNO>")
        assert (await site.api.post_xml(order, key=PLATFORM_A)).status == 422
        first = page.locator("#refused-table tbody tr[data-rejection]").first
        await expect(first).to_contain_text("platform-a")
        rejection = await first.get_attribute("data-rejection")
        await first.locator(".sent-toggle").click()
        await expect(page.locator("#refused-table tr.sent pre")).to_contain_text("<ceb:orderNO>")
        await page.locator(f"#dead-table tr[data-job='{dead}'] details.history summary").click()

        again = samples.render_shipment(new_shipment(443))["CEB311"].replace(b"ceb:orderNo>", b"ceb:orderNO>")
        assert (await site.api.post_xml(again, key=PLATFORM_A)).status == 422
        await expect(page.locator("#refused-table tbody tr[data-rejection]")).to_have_count(2)
        other = await make_dead_letter(site.pool, guid="KEEP-0002")
        await expect(page.locator(f"#dead-table tr[data-job='{other}']")).to_have_count(1)

        row = page.locator(f"#refused-table tbody tr[data-rejection='{rejection}']")
        await expect(row.locator(".sent-toggle")).to_have_attribute("aria-expanded", "true")
        await expect(page.locator("#refused-table tr.sent")).to_have_count(1)
        assert await row.evaluate("r => r.nextElementSibling.classList.contains('sent')")
        assert await page.locator(f"#dead-table tr[data-job='{dead}'] details.history").evaluate("d => d.open")
        await page.context.close()
    assert errors == []


async def test_back_from_a_shipment_the_list_is_where_it_was_left(browser: Browser, site: Site) -> None:
    """Back from a shipment opened from the list, the list was read again from its first page and the page scrolled
    to its top: an operator who had loaded 150 rows and opened the 120th lost the place."""
    insert = await _listed(site.pool, mismatched=170, incomplete=0)
    errors: list[str] = []
    async with asyncio.timeout(90):
        page = await live_console(browser, site, errors)
        for count in ("100+", "150+"):
            await page.click("#list-more")
            await expect(page.locator("#list-count")).to_have_text(count)
        rows = page.locator("#list-table tbody tr")
        link = rows.nth(119).locator("td.order a")
        await link.scroll_into_view_if_needed()
        scrolled = await page.evaluate("window.scrollY")
        assert scrolled > 2000, scrolled
        await link.click()
        await expect(page.locator("#shipment h1")).to_be_focused()
        await page.go_back()
        await expect(link).to_be_focused()
        await page.wait_for_timeout(1000)  # longer than a reload of the list would take
        await expect(page.locator("#list-count")).to_have_text("150+")
        await expect(link).to_be_focused()
        assert await page.evaluate("window.scrollY") == scrolled

        # a shipment changed meanwhile: the list is read again, as many rows as were loaded, the same one focused (the
        # one opened: its row may move down by the new one)
        href = await link.get_attribute("href")
        await link.click()
        await expect(page.locator("#shipment h1")).to_be_focused()
        await site.pool.execute(insert, "MMNEW", "mismatched", 0)
        await page.wait_for_timeout(1500)  # the feed reports it while the shipment page is shown
        await page.go_back()
        await page.wait_for_selector("#list-table tbody tr[data-order='MMNEW']")
        await expect(page.locator("#list-count")).to_have_text("150+")
        focused = page.locator(f"#list-table tbody a[href='{href}']")
        await expect(focused).to_be_focused()
        assert abs(await page.evaluate("window.scrollY") - scrolled) < 200
        await page.click("#list-more")  # its cursor goes on from there
        await expect(page.locator("#list-count")).to_have_text("171")
        await page.context.close()
    assert errors == []


async def test_the_console_says_what_a_held_inventory_waits_for_and_which_sellers_webhooks_are_paused(
    browser: Browser, db_pool: asyncpg.Pool
) -> None:
    """With forwarding routed: a bonded warehouse's message of two parcels is held; the shipment page of the parcel
    whose legs are all in says it waits for the other parcel (held until), and the queue panel names the seller
    whose webhook URL keeps failing, with its waiting events, under the webhook endpoint."""
    fwd = ForwardingSettings()
    app = create_app(apiutil.test_settings(forwarding=fwd), db_pool, signer=sign_as_agent, router=routing_router(fwd))
    app[CONSOLE].poll_interval = 0.3
    runner, base = await start(app)
    errors: list[str] = []
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(60):
            api = Client(session, base)
            a, b = new_shipment(481, mode="1210"), new_shipment(482, mode="1210")
            both = {**a.inventory, "guid": "7A1D2C3B-4A59-4687-9A0B-1C2D3E4F5A6B",
                    "documents": [a.inventory_doc, b.inventory_doc]}  # fmt: skip
            assert (await api.post_xml(xml_of(both))).status == 202
            await submit(api, a, "CEB311", "CEB411", "CEB511")
            async with db_pool.acquire() as conn, conn.transaction():
                for n in range(3):
                    job = await cbec_queue.enqueue(conn, endpoint="webhook", kind="webhook",
                                                   payload={"seller": "S-DOWN", "event": "e", "n": n})  # fmt: skip
                    await conn.execute("UPDATE jobs SET last_error = 'Deferred: seller S-DOWN paused' WHERE id = $1",
                                       job)  # fmt: skip
            page = await new_page(browser, errors)
            await sign_in(page, base, ADMIN)
            await page.wait_for_url(base + "/ops")
            await expect(page.locator("#queue-table .paused-sellers")).to_have_text("paused 暂停: S-DOWN (3)")
            await page.goto(f"{base}/ops#/shipment?{urlencode(key_of(a))}")
            held = page.locator(".timeline li.document .held-until")
            await expect(held).to_have_count(1)
            await expect(held).to_contain_text(f"{b.order_doc['ebpCode']}/{b.order_doc['orderNo']}: matched 对碰一致")
            await expect(held).to_contain_text(f"{a.order_doc['orderNo']}: order receipt 订单回执")
            await page.context.close()
    finally:
        await asyncio.wait_for(runner.cleanup(), 10)
    assert errors == []
