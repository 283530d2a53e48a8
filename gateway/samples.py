"""Realistic, internally consistent import shipments for tests, the benchmark and the docs.

:func:`shipment` builds the four legs of one parcel — order (CEB311), payment (CEB411), waybill
(CEB511), inventory (CEB621) — as friendly JSON payloads accepted by :func:`gateway.render.render`.
Everything comes from the given ``random.Random``, so a seed (plus a fixed ``now``) reproduces a
shipment exactly. The data is invented: fictitious enterprises and brands, made-up people whose
ID numbers merely have a valid check digit.

Consistency kept by construction (the spec's §6.3 rules and the high-confidence §6.4 ones):

* order acturalPaid = goodsValue + freight + taxTotal − discount; goodsValue = Σ line totalPrice;
  totalPrice = price × qty; payment amountPaid = acturalPaid; all amounts with 2 decimals;
* payer = buyer (name and ID number); waybill consignee / telephone / address = the order's;
* inventory lines = order lines by gnum (itemName, qty, price, totalPrice), gnum 1..n;
  inventory freight = order freight; waybill weight = inventory grossWeight ≥ netWeight;
* assureCode = ebcCode; currency 142 everywhere; ID types 1; packNo 1;
* 9610 (direct purchase) carries trafNo / voyageNo / billNo; 1210 (bonded) carries emsNo,
  areaCode, areaName, itemRecordNo and country 142;
* acturalPaid ≤ ¥5,000 (the single-transaction limit) unless ``max_total`` says otherwise.

:func:`broken` returns a copy with one deliberate defect from :data:`DEFECTS`.

taxTotal is an approximation (comprehensive rate 9.1 %, or 23.06 % for goods with 15 %
consumption tax, on goods plus a pro-rata share of freight); it is not a tax-module oracle.
"""

from __future__ import annotations

import copy
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any, ClassVar, cast

from lxml import etree

from gateway.render import FIELD_ORDER, SHANGHAI, render

CENT = Decimal("0.01")
SINGLE_LIMIT = Decimal("5000")  # 财关税〔2018〕49号 single-transaction limit
ANNUAL_LIMIT = Decimal("26000")

# --- enterprises (fictitious) --------------------------------------------------------------

EBP_CODE = "46012609BQ"
EBP_NAME = "海南示例跨境电商平台有限公司"
EBC_CODE = "4601260E35"
EBC_NAME = "海南示例国际贸易有限公司"
AGENT = ("4601980H12", "海口示例报关服务有限公司")
AREA = ("4604640032", "海南示例保税仓储有限公司")  # warehouse enterprise in the bonded zone (1210)
EMS_NO = "T4604W000035"  # its e-account book (1210)

PAYERS: tuple[tuple[str, str, str], ...] = (  # code, name, payTransactionId prefix
    ("312226T001", "示例网络支付有限公司", "2088"),
    ("440316T002", "示例云支付科技有限公司", "4200"),
    ("110108T003", "示例银联商务服务有限公司", "UP"),
)
CARRIERS: tuple[tuple[str, str, str], ...] = (  # code, name, logisticsNo prefix
    ("4601980A27", "海南示例国际快递有限公司", "HK"),
    ("3122461Z01", "示例速运有限公司", "SF"),
    ("1101980B33", "示例跨境物流有限公司", "YT"),
)
AIRLINES: tuple[tuple[str, str], ...] = (("HU", "880"), ("CZ", "784"), ("CA", "999"), ("MU", "781"))
CUSTOMS: tuple[str, ...] = ("4601", "5141", "2233", "0102")

# --- goods ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Good:
    gcode: str  # 10-digit HS code (8-digit tariff line + 2 supplementary digits)
    gname: str
    spec: str  # shown in itemName and gmodel
    unit: str  # transaction unit (JGS-20, spec §3.6)
    unit1: str  # legal first unit
    net_kg: Decimal  # net weight of one unit
    price: tuple[int, int]  # unit price range, yuan
    countries: tuple[str, ...]  # origin countries (spec §3.6)
    brands: tuple[str, ...]
    ingredients: str
    tax_rate: Decimal  # comprehensive CBEC rate (70 % of VAT [+ consumption tax])


_VAT = Decimal("0.091")  # 0.7 × 13 %
_COSMETIC = Decimal("0.2306")  # 0.7 × (13 % + 15 %) / (1 − 15 %), rounded

GOODS: tuple[Good, ...] = (
    Good("1901101000", "婴儿配方奶粉", "3段 800g/罐", "122", "035", Decimal("0.8"), (198, 368),
         ("609", "601", "309", "304"), ("新牧之源", "澳晨", "荷乳坊"), "乳清蛋白粉、脱脂乳粉、植物油、乳糖", _VAT),
    Good("0402210000", "全脂奶粉", "1kg/袋", "136", "035", Decimal("1"), (89, 169),
         ("609", "601"), ("牧野", "南岛乳业"), "全脂乳粉", _VAT),
    Good("3304990099", "保湿面霜", "50ml/瓶", "142", "035", Decimal("0.05"), (159, 899),
         ("116", "133", "305", "502"), ("雪肌研", "花研", "初露"), "水、甘油、透明质酸钠、角鲨烷", _COSMETIC),
    Good("3304990099", "修护精华液", "30ml/瓶", "142", "035", Decimal("0.03"), (199, 1290),
         ("116", "133", "305"), ("雪肌研", "初露", "珀澜"), "水、烟酰胺、二裂酵母发酵产物溶胞物", _COSMETIC),
    Good("3303000000", "淡香水", "100ml/瓶", "142", "035", Decimal("0.1"), (399, 1200),
         ("305", "303"), ("珀澜", "晨雾"), "乙醇、香精、水", _COSMETIC),
    Good("3305100090", "洗发水", "500ml/瓶", "142", "035", Decimal("0.5"), (49, 139),
         ("116", "133", "601"), ("清源", "丝润"), "水、月桂醇聚醚硫酸酯钠、椰油酰胺丙基甜菜碱", _VAT),
    Good("3401300000", "氨基酸洗面奶", "120g/支", "012", "035", Decimal("0.12"), (59, 189),
         ("116", "133"), ("雪肌研", "清源"), "水、甘油、月桂酰谷氨酸钠", _VAT),
    Good("3306101000", "美白牙膏", "140g/支", "012", "035", Decimal("0.14"), (19, 59),
         ("116", "133", "303"), ("晶齿", "清源"), "碳酸钙、山梨糖醇、水合硅石", _VAT),
    Good("2106909090", "复合维生素片", "120粒/瓶", "142", "035", Decimal("0.25"), (99, 299),
         ("601", "502", "609"), ("健源", "澳康"), "维生素C、维生素E、烟酰胺、微晶纤维素", _VAT),
    Good("2106909090", "深海鱼油软胶囊", "200粒/瓶", "142", "035", Decimal("0.3"), (129, 329),
         ("601", "609", "502"), ("澳康", "海元素"), "鱼油、明胶、甘油", _VAT),
    Good("9619001100", "婴儿纸尿裤", "L码 54片/包", "125", "035", Decimal("1.2"), (79, 169),
         ("116", "133", "304"), ("柔贝", "棉小芽"), "无纺布、高分子吸水树脂、绒毛浆", _VAT),
    Good("1806900000", "黑巧克力", "200g/盒", "140", "035", Decimal("0.3"), (39, 129),
         ("301", "304", "305"), ("可可堡", "金榛"), "可可液块、白砂糖、可可脂", _VAT),
    Good("0409000000", "天然蜂蜜", "500g/瓶", "142", "035", Decimal("0.5"), (129, 459),
         ("609",), ("南岛蜂场", "蜜源谷"), "蜂蜜", _VAT),
    Good("9004100000", "太阳镜", "偏光 1副/盒", "007", "007", Decimal("0.03"), (499, 1999),
         ("305", "502", "116"), ("晨雾", "远视界"), "镜框:醋酸纤维 镜片:尼龙", _VAT),
)
_GOOD_BY_NAME = {(g.gcode, g.gname): g for g in GOODS}
_EAN_PREFIX = {"116": "45", "133": "880", "609": "94", "601": "93", "309": "87", "304": "40", "305": "30",
               "303": "50", "301": "54", "502": "07", "142": "69"}  # fmt: skip

# --- people and places ------------------------------------------------------------------

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
_GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英晨宇子涵欣怡浩然梓萱思远雨泽佳琪一鸣诗雨俊熙嘉怡"
#: (province, city, district, GB/T 2260 district code)
DISTRICTS: tuple[tuple[str, str, str, str], ...] = (
    ("北京市", "北京市", "朝阳区", "110105"),
    ("北京市", "北京市", "海淀区", "110108"),
    ("上海市", "上海市", "浦东新区", "310115"),
    ("上海市", "上海市", "徐汇区", "310104"),
    ("广东省", "广州市", "天河区", "440106"),
    ("广东省", "深圳市", "南山区", "440305"),
    ("浙江省", "杭州市", "西湖区", "330106"),
    ("江苏省", "南京市", "鼓楼区", "320106"),
    ("四川省", "成都市", "武侯区", "510107"),
    ("湖北省", "武汉市", "洪山区", "420111"),
    ("海南省", "海口市", "美兰区", "460108"),
    ("山东省", "青岛市", "市南区", "370202"),
    ("福建省", "厦门市", "思明区", "350203"),
    ("陕西省", "西安市", "雁塔区", "610113"),
)
_STREETS = ("人民路", "建设路", "中山路", "解放路", "和平路", "长江路", "滨海大道", "科技园路", "文化路", "新华街")
_ESTATES = ("阳光花园", "锦绣家园", "翠湖苑", "金色港湾", "世纪城", "绿地名邸", "碧水湾", "书香小区")
_MOBILE_PREFIXES = ("133", "135", "136", "138", "139", "150", "151", "158", "177", "186", "187", "188", "199")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def id_check_digit(first17: str) -> str:
    """GB 11643 (ISO 7064 MOD 11-2) check character of a resident ID number."""
    return _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def _ean13(rng: random.Random, country: str) -> str:
    body = _EAN_PREFIX.get(country, "69")
    body += "".join(str(rng.randrange(10)) for _ in range(12 - len(body)))
    s = sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(body))
    return body + str((10 - s % 10) % 10)


def _digits(rng: random.Random, n: int) -> str:
    return f"{rng.randrange(10**n):0{n}d}"


@dataclass(frozen=True)
class Person:
    name: str
    id_number: str
    telephone: str


def _person(rng: random.Random, now: datetime) -> Person:
    name = rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.choice((1, 2))))
    birth = datetime(now.year - rng.randint(20, 60), 1, 1) + timedelta(days=rng.randrange(365))
    first17 = rng.choice(DISTRICTS)[3] + birth.strftime("%Y%m%d") + _digits(rng, 3)
    phone = rng.choice(_MOBILE_PREFIXES) + _digits(rng, 8)
    return Person(name, first17 + id_check_digit(first17), phone)


def _address(rng: random.Random) -> tuple[str, str]:
    province, city, district, code = rng.choice(DISTRICTS)
    region = province + ("" if city == province else city) + district
    street = (f"{rng.choice(_STREETS)}{rng.randint(1, 999)}号{rng.choice(_ESTATES)}"
              f"{rng.randint(1, 30)}栋{rng.randint(1, 4)}单元{rng.randint(1, 32)}{rng.randint(1, 4):02d}室")
    return region + street, code


def _money(d: Decimal) -> str:
    return str(d.quantize(CENT))


def _t(dt: datetime) -> str:
    return dt.strftime("%Y%m%d%H%M%S")


def _base_transfer(code: str, name: str) -> dict[str, str]:
    # dxpId derived from the code so that one enterprise keeps one DXP id across samples
    return {"copCode": code, "copName": name, "dxpMode": "DXP", "dxpId": f"DXPENT{zlib.crc32(code.encode()):010d}"}


def _guid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032X}"
    # shaped like a uuid4 (version 4, RFC 4122 variant) but drawn from rng, so seeds reproduce it
    h = h[:12] + "4" + h[13:16] + "89AB"[int(h[16], 16) % 4] + h[17:]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# --- the sample ---------------------------------------------------------------------------


def _anchor(now: datetime | None) -> datetime:
    """The time a sample's times are drawn back from: ``now`` (the clock's by default) in Shanghai, naive, to the
    second, as the messages write their times."""
    if now is None:
        now = datetime.now(SHANGHAI)
    elif now.tzinfo is not None:
        now = now.astimezone(SHANGHAI)
    return now.replace(tzinfo=None, microsecond=0)



class _Parcel:
    """What the samples of both flows share: one parcel's legs as friendly JSON payloads, one document each."""

    #: (message code, attribute) of each leg, in the spec's order
    LEGS: ClassVar[tuple[tuple[str, str], ...]]
    order: dict[str, Any]
    waybill: dict[str, Any]
    inventory: dict[str, Any]

    def doc(self, leg: str) -> dict[str, Any]:
        """The one document of a leg's payload (``"order"``, ``"waybill"`` ...)."""
        return cast(dict[str, Any], getattr(self, leg)["documents"][0])

    @property
    def order_doc(self) -> dict[str, Any]:
        return self.doc("order")

    @property
    def waybill_doc(self) -> dict[str, Any]:
        return self.doc("waybill")

    @property
    def inventory_doc(self) -> dict[str, Any]:
        return self.doc("inventory")

    @property
    def mode(self) -> str:
        """The inventory's tradeMode: 9610, or 1210 (bonded import / special-zone export)."""
        return str(self.inventory_doc["tradeMode"])

    def payloads(self) -> dict[str, dict[str, Any]]:
        return {code: getattr(self, leg) for code, leg in self.LEGS}


@dataclass
class ShipmentSample(_Parcel):
    """The four legs of one import parcel: order (CEB311), payment (CEB411), waybill (CEB511), inventory (CEB621)."""

    LEGS = (("CEB311", "order"), ("CEB411", "payment"), ("CEB511", "waybill"), ("CEB621", "inventory"))
    order: dict[str, Any]
    payment: dict[str, Any]
    waybill: dict[str, Any]
    inventory: dict[str, Any]

    @property
    def payment_doc(self) -> dict[str, Any]:
        return self.doc("payment")


def _pick_goods(rng: random.Random, n: int) -> list[Good]:
    if n <= len(GOODS):
        return rng.sample(GOODS, n)
    return [rng.choice(GOODS) for _ in range(n)]


def _apply_money(s: ShipmentSample) -> None:
    """Derive every total of the shipment from the order lines' price and qty (and head freight/discount)."""
    order, inv = s.order_doc, s.inventory_doc
    freight = Decimal(order["freight"])
    totals = []
    for line, inv_line in zip(order["items"], inv["items"], strict=True):
        total = (Decimal(line["price"]) * Decimal(line["qty"])).quantize(CENT)
        line["totalPrice"] = _money(total)
        for k in ("price", "qty", "totalPrice"):
            inv_line[k] = line[k]
        totals.append(total)
    goods = sum(totals, Decimal(0))
    tax = Decimal(0)
    share_left = freight
    for i, total in enumerate(totals):
        # freight is part of the dutiable value; spread it by value, the last line takes the rest
        last = i == len(totals) - 1
        share = share_left if last else (freight * total / goods).quantize(CENT) if goods else Decimal(0)
        share_left -= share
        good = _GOOD_BY_NAME.get((inv["items"][i]["gcode"], inv["items"][i]["gname"]))
        rate = good.tax_rate if good else _VAT
        tax += ((total + share) * rate).quantize(CENT)
    paid = goods + freight + tax - Decimal(order["discount"])
    order["goodsValue"] = _money(goods)
    order["taxTotal"] = _money(tax)
    order["acturalPaid"] = _money(paid)
    s.payment_doc["amountPaid"] = order["acturalPaid"]


def shipment(
    rng: random.Random,
    *,
    mode: str = "9610",
    n_items: int | None = None,
    ebp_code: str = EBP_CODE,
    ebc_code: str = EBC_CODE,
    order_no: str | None = None,
    ebp_name: str = EBP_NAME,
    ebc_name: str = EBC_NAME,
    now: datetime | None = None,
    max_total: Decimal = SINGLE_LIMIT,
) -> ShipmentSample:
    """One consistent shipment. ``now`` anchors the (recent) times; same seed + same ``now`` → same sample.

    ``mode`` is the tradeMode, 9610 (direct purchase) or 1210 (bonded); ``n_items`` 1–99 lines
    (default 1–4); ``max_total`` caps acturalPaid (default the ¥5,000 single limit).
    """
    if mode not in ("9610", "1210"):
        raise ValueError(f"mode must be '9610' or '1210', not {mode!r}")
    n = n_items if n_items is not None else rng.choice((1, 1, 1, 2, 2, 3, 4))
    if not 1 <= n <= 99:
        raise ValueError(f"n_items must be 1..99, not {n}")
    now = _anchor(now)
    bonded = mode == "1210"

    # times: order placed and paid 2–10 h ago, declarations follow within ~1.5 h, all before now
    placed = now - timedelta(minutes=rng.randint(120, 600))
    pay_time = placed + timedelta(minutes=rng.randint(1, 10), seconds=rng.randrange(60))
    order_time = pay_time + timedelta(minutes=rng.randint(1, 5), seconds=rng.randrange(60))
    payment_time = pay_time + timedelta(minutes=rng.randint(1, 3), seconds=rng.randrange(60))
    waybill_time = order_time + timedelta(minutes=rng.randint(5, 30), seconds=rng.randrange(60))
    inventory_time = waybill_time + timedelta(minutes=rng.randint(5, 30), seconds=rng.randrange(60))

    buyer = _person(rng, now)
    consignee = buyer if rng.random() < 0.85 else _person(rng, now)  # sometimes a gift to someone else
    address, district = _address(rng)
    pay_code, pay_name, pay_prefix = rng.choice(PAYERS)
    log_code, log_name, log_prefix = rng.choice(CARRIERS)
    customs = rng.choice(CUSTOMS)

    order_no = order_no or f"{'BS' if bonded else 'ZG'}{placed:%Y%m%d}{_digits(rng, 12)}"
    logistics_no = f"{log_prefix}{_digits(rng, 13)}"
    pay_transaction_id = f"{pay_prefix}{pay_time:%Y%m%d%H%M%S}{_digits(rng, 12)}"

    goods = _pick_goods(rng, n)
    freight = Decimal(rng.choice((0, 10)) if bonded else rng.randint(10, 60))
    lines: list[tuple[Good, str, str, int, Decimal]] = []  # good, brand, country, qty, price
    for g in goods:
        qty = rng.choice((1, 1, 1, 2, 2, 3))
        price = Decimal(rng.randint(g.price[0] * 100, g.price[1] * 100)) / 100
        lines.append((g, rng.choice(g.brands), rng.choice(g.countries), qty, price))
    departure = "142" if bonded else lines[0][2]  # direct purchase: shipped from the first item's origin
    # keep acturalPaid within max_total: goods + freight + tax (≤ 23.06 %) ≤ max_total
    cap = ((max_total - freight) / Decimal("1.25")).quantize(CENT, ROUND_DOWN)
    goods_value = sum((p * q for _, _, _, q, p in lines), Decimal(0))
    if goods_value > cap:
        factor = cap / goods_value
        lines = [(g, b, c, q, max(CENT, (p * factor).quantize(CENT, ROUND_DOWN))) for g, b, c, q, p in lines]
        goods_value = sum((p * q for _, _, _, q, p in lines), Decimal(0))
    discount = Decimal(0)
    if rng.random() < 0.3:
        discount = Decimal(rng.choice((5, 10, 20, 30, 50)))
        if discount * 2 > goods_value:
            discount = Decimal(0)

    order_items: list[dict[str, Any]] = []
    inventory_items: list[dict[str, Any]] = []
    net = Decimal(0)
    for i, (g, brand, country, qty, price) in enumerate(lines, start=1):
        item_name = f"{brand}{g.gname} {g.spec}"
        gmodel = f"品牌:{brand};规格:{g.spec};成分:{g.ingredients}"
        bar_code = _ean13(rng, country)
        item_no = f"SKU{_digits(rng, 9)}"
        order_items.append({
            "gnum": i, "itemNo": item_no, "itemName": item_name, "gmodel": gmodel,
            "itemDescribe": f"{country_name(country)}进口 {brand}{g.gname}", "barCode": bar_code,
            "unit": g.unit, "qty": str(qty), "price": _money(price), "totalPrice": "", "currency": "142",
            "country": country,
        })  # fmt: skip
        qty1 = Decimal(qty) if g.unit1 == g.unit else g.net_kg * qty
        inv_item: dict[str, Any] = {
            "gnum": i, "itemNo": item_no, "itemName": item_name, "gcode": g.gcode, "gname": g.gname,
            "gmodel": gmodel, "barCode": bar_code, "country": country, "currency": "142",
            "qty": str(qty), "unit": g.unit, "qty1": str(qty1), "unit1": g.unit1,
            "price": _money(price), "totalPrice": "",
        }  # fmt: skip
        if bonded:
            inv_item["itemRecordNo"] = f"{10000 + GOODS.index(g)}"
        else:
            inv_item["tradeCountry"] = departure
        inventory_items.append(inv_item)
        net += g.net_kg * qty
    gross = (net * Decimal("1.1") + Decimal("0.15")).quantize(Decimal("0.001"))
    net = net.quantize(Decimal("0.001"))

    order_doc: dict[str, Any] = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(order_time), "appStatus": "2", "orderType": "I",
        "orderNo": order_no, "ebpCode": ebp_code, "ebpName": ebp_name, "ebcCode": ebc_code, "ebcName": ebc_name,
        "goodsValue": "", "freight": _money(freight), "discount": _money(discount), "taxTotal": "",
        "acturalPaid": "", "currency": "142", "buyerRegNo": f"u{buyer.telephone[-4:]}{_digits(rng, 8)}",
        "buyerName": buyer.name, "buyerTelephone": buyer.telephone, "buyerIdType": "1",
        "buyerIdNumber": buyer.id_number, "payCode": pay_code, "payName": pay_name,
        "payTransactionId": pay_transaction_id, "consignee": consignee.name,
        "consigneeTelephone": consignee.telephone, "consigneeAddress": address, "consigneeDistrict": district,
        "items": order_items,
    }  # fmt: skip
    payment_doc: dict[str, Any] = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(payment_time), "appStatus": "2", "payCode": pay_code,
        "payName": pay_name, "payTransactionId": pay_transaction_id, "orderNo": order_no, "ebpCode": ebp_code,
        "ebpName": ebp_name, "payerIdType": "1", "payerIdNumber": buyer.id_number, "payerName": buyer.name,
        "telephone": buyer.telephone, "amountPaid": "", "currency": "142", "payTime": _t(pay_time),
    }  # fmt: skip
    goods_info = "；".join(f"{it['itemName']}×{it['qty']}" for it in order_items)
    waybill_doc: dict[str, Any] = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(waybill_time), "appStatus": "2",
        "logisticsCode": log_code, "logisticsName": log_name, "logisticsNo": logistics_no, "orderNo": order_no,
        "freight": _money(freight), "insuredFee": "0.00", "currency": "142", "weight": str(gross), "packNo": "1",
        "goodsInfo": goods_info if len(goods_info) <= 200 else goods_info[:199] + "…",
        "consignee": consignee.name, "consigneeAddress": address, "consigneeTelephone": consignee.telephone,
    }  # fmt: skip
    inventory_doc: dict[str, Any] = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(inventory_time), "appStatus": "2", "orderNo": order_no,
        "ebpCode": ebp_code, "ebpName": ebp_name, "ebcCode": ebc_code, "ebcName": ebc_name,
        "logisticsNo": logistics_no, "logisticsCode": log_code, "logisticsName": log_name,
        "copNo": f"INV{inventory_time:%Y%m%d}{_digits(rng, 6)}", "assureCode": ebc_code, "ieFlag": "I",
        "declTime": f"{inventory_time:%Y%m%d}", "customsCode": customs, "portCode": customs,
        "buyerIdType": "1", "buyerIdNumber": buyer.id_number, "buyerName": buyer.name,
        "buyerTelephone": buyer.telephone, "consigneeAddress": address, "agentCode": AGENT[0],
        "agentName": AGENT[1], "tradeMode": mode, "country": departure, "freight": _money(freight),
        "insuredFee": "0.00", "currency": "142", "packNo": "1", "grossWeight": str(gross), "netWeight": str(net),
        "items": inventory_items,
    }  # fmt: skip
    if bonded:
        inventory_doc.update({"emsNo": EMS_NO, "areaCode": AREA[0], "areaName": AREA[1], "trafMode": "4"})
    else:
        airline, prefix = rng.choice(AIRLINES)
        serial = rng.randrange(10**7)
        bill_no = f"{prefix}-{serial:07d}{serial % 7}"  # air waybill: 7-digit serial + mod-7 check digit
        arrival = inventory_time - timedelta(days=rng.randint(0, 2))
        inventory_doc.update({
            "ieDate": f"{arrival:%Y%m%d}", "trafMode": "5", "trafNo": f"{airline}{rng.randint(1000, 9999)}",
            "voyageNo": f"{arrival:%Y%m%d}", "billNo": bill_no,
        })  # fmt: skip
        waybill_doc["billNo"] = bill_no
    for doc, head, line in ((waybill_doc, "LogisticsHead", None), (inventory_doc, "InventoryHead", "InventoryList")):
        _xsd_key_order(doc, head, line)

    s = ShipmentSample(
        order={"type": "CEB311", "guid": _guid(rng), "version": "1.0",
               "baseTransfer": _base_transfer(ebp_code, ebp_name), "documents": [order_doc]},
        payment={"type": "CEB411", "guid": _guid(rng), "version": "1.0",
                 "baseTransfer": _base_transfer(pay_code, pay_name), "documents": [payment_doc]},
        waybill={"type": "CEB511", "guid": _guid(rng), "version": "1.0",
                 "baseTransfer": _base_transfer(log_code, log_name), "documents": [waybill_doc]},
        inventory={"type": "CEB621", "guid": _guid(rng), "version": "1.0",
                   "baseTransfer": _base_transfer(*AGENT), "documents": [inventory_doc]},
    )  # fmt: skip
    _apply_money(s)
    return s


_COUNTRY_NAMES = {"116": "日本", "133": "韩国", "142": "中国", "301": "比利时", "303": "英国", "304": "德国",
                  "305": "法国", "309": "荷兰", "502": "美国", "601": "澳大利亚", "609": "新西兰"}  # fmt: skip


def payment_data(s: ShipmentSample) -> dict[str, Any]:
    """The platform's raw payment data behind a sample parcel (what ``POST /v1/payment-data`` takes, spec §10.2): the
    payment request the platform sent its payment company and the answer, the amount paid, the order's goods with
    a link to each, and the account the seller was paid into."""
    order, pay = s.order_doc, s.payment_doc
    request = (f"https://pay.example/gateway?out_trade_no={order['orderNo']}&total_fee={pay['amountPaid']}"
               f"&trade_no={pay['payTransactionId']}")  # fmt: skip
    return {
        "payExchangeInfoHead": {
            "initalRequest": request,
            "initalResponse": f"SUCCESS trade_no={pay['payTransactionId']} total_fee={pay['amountPaid']}",
            "ebpCode": order["ebpCode"], "payCode": pay["payCode"], "payTransactionId": pay["payTransactionId"],
            "totalAmount": pay["amountPaid"], "currency": "142", "verDept": "3", "payType": "1",
            "tradingTime": pay["payTime"],
        },
        "payExchangeInfoLists": [{
            "orderNo": order["orderNo"],
            "goodsInfo": [{"gname": it["itemName"], "itemLink": f"https://shop.example/item/{it['itemNo']}"}
                          for it in order["items"]],
            "recpAccount": "6222020200112233445", "recpCode": order["ebcCode"], "recpName": order["ebcName"],
        }],
    }  # fmt: skip


def _xsd_key_order(doc: dict[str, Any], head: str, line: str | None) -> None:
    """Reorder keys like the XML, only so that the JSON reads well; render orders elements itself."""
    order = FIELD_ORDER["import"][head]
    items = doc.pop("items", None)
    ordered = {k: doc[k] for k in sorted(doc, key=order.index)}
    doc.clear()
    doc.update(ordered)
    if items is not None and line is not None:
        for i, it in enumerate(items):
            items[i] = {k: it[k] for k in sorted(it, key=FIELD_ORDER["import"][line].index)}
        doc["items"] = items


def country_name(code: str) -> str:
    return _COUNTRY_NAMES.get(code, code)


def render_shipment(
    s: ShipmentSample,
    *,
    signer: Callable[[etree._Element], None] | None = None,
    sign_all: bool = False,
) -> dict[str, bytes]:
    """Render the four legs: ``{"CEB311": xml, "CEB411": ..., "CEB511": ..., "CEB621": ...}``.

    ``signer`` (``Callable[[etree._Element], None]``) signs the CEB621, whose XSD requires a
    signature; with ``sign_all`` it signs the other three too (optional for them).
    """
    out: dict[str, bytes] = {}
    for code, payload in s.payloads().items():
        use = signer if (code == "CEB621" or sign_all) else None
        out[code] = render(payload, signer=use)
    return out


# --- deliberate defects -------------------------------------------------------------------

#: defect name -> the property it breaks (everything else stays consistent where possible).
DEFECTS: dict[str, str] = {
    "amount_mismatch": "payment amountPaid ≠ order acturalPaid (R2)",
    "actural_paid_formula": "order acturalPaid ≠ goodsValue + freight + taxTotal − discount; payment follows (R1)",
    "payer_not_buyer": "payment payerName / payerIdNumber belong to another person than the order's buyer (§6.4)",
    "consignee_mismatch": "waybill consignee ≠ order consignee (R3)",
    "address_mismatch": "waybill consigneeAddress ≠ order consigneeAddress (R3)",
    "telephone_mismatch": "waybill consigneeTelephone ≠ order consigneeTelephone (R3)",
    "gnum_gap": "inventory gnum not consecutive from 1: the last line's gnum skips one (R8)",
    "item_mismatch": "inventory line 1 qty (and totalPrice) differ from the order line with the same gnum (R8)",
    "line_total_mismatch": "order line 1 totalPrice ≠ price × qty (R4); goodsValue and the inventory line keep "
    "the old total",
    "bad_currency": "order head currency is 502 (USD), not 142 (R5)",
    "bad_id_type": "order buyerIdType is 2, not 1 (R6)",
    "bad_id_check_digit": "buyer ID number has a wrong check digit (in order, payment and inventory alike)",
    "pack_no_not_one": "waybill packNo is 2 (R7)",
    "assure_code_foreign": "inventory assureCode is none of ebpCode / ebcCode / logisticsCode (R9)",
    "missing_bill_no_9610": "9610 inventory without billNo (R10); 9610 samples only",
    "missing_ems_no_1210": "1210 inventory without emsNo (R10); 1210 samples only",
    "bonded_country_not_142": "1210 inventory country is not 142 (R10); 1210 samples only",
    "net_over_gross": "inventory netWeight > grossWeight",
    "qty1_mismatch": "inventory line 1 has unit1 = unit but qty1 ≠ qty",
    "over_single_limit": "acturalPaid > ¥5,000 with several lines, or > ¥26,000 with one line; all else consistent",
}


def broken(s: ShipmentSample, defect: str) -> ShipmentSample:
    """A deep copy of ``s`` with one deliberate defect from :data:`DEFECTS`."""
    if defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; known: {', '.join(DEFECTS)}")
    b = copy.deepcopy(s)
    order, pay, way, inv = b.order_doc, b.payment_doc, b.waybill_doc, b.inventory_doc
    rng = random.Random(zlib.crc32(f"{order['orderNo']}/{defect}".encode()))  # deterministic replacement data
    match defect:
        case "amount_mismatch":
            pay["amountPaid"] = _money(Decimal(pay["amountPaid"]) + 1)
        case "actural_paid_formula":
            order["acturalPaid"] = _money(Decimal(order["acturalPaid"]) + 1)
            pay["amountPaid"] = order["acturalPaid"]
        case "payer_not_buyer":
            other = _other_person(rng, order["buyerIdNumber"])
            pay["payerName"], pay["payerIdNumber"] = other.name, other.id_number
        case "consignee_mismatch":
            way["consignee"] = _other_person(rng, order["buyerIdNumber"], avoid_name=order["consignee"]).name
        case "address_mismatch":
            address = order["consigneeAddress"]
            while address == order["consigneeAddress"]:
                address = _address(rng)[0]
            way["consigneeAddress"] = address
        case "telephone_mismatch":
            phone = order["consigneeTelephone"]
            while phone == order["consigneeTelephone"]:
                phone = rng.choice(_MOBILE_PREFIXES) + _digits(rng, 8)
            way["consigneeTelephone"] = phone
        case "gnum_gap":
            inv["items"][-1]["gnum"] = int(inv["items"][-1]["gnum"]) + 1
        case "item_mismatch":
            line = inv["items"][0]
            line["qty"] = str(Decimal(line["qty"]) + 1)
            line["totalPrice"] = _money(Decimal(line["price"]) * Decimal(line["qty"]))
            if line["unit1"] == line["unit"]:
                line["qty1"] = line["qty"]
        case "line_total_mismatch":
            order["items"][0]["totalPrice"] = _money(Decimal(order["items"][0]["totalPrice"]) + CENT)
        case "bad_currency":
            order["currency"] = "502"
        case "bad_id_type":
            order["buyerIdType"] = "2"
        case "bad_id_check_digit":
            good = order["buyerIdNumber"]
            wrong = _ID_CHECK[(_ID_CHECK.index(good[-1]) + 1) % 11]
            for doc, key in ((order, "buyerIdNumber"), (pay, "payerIdNumber"), (inv, "buyerIdNumber")):
                doc[key] = good[:-1] + wrong
        case "pack_no_not_one":
            way["packNo"] = "2"
        case "assure_code_foreign":
            inv["assureCode"] = "4601999Z99"
        case "missing_bill_no_9610":
            _need_mode(b, "9610", defect)
            del inv["billNo"]
        case "missing_ems_no_1210":
            _need_mode(b, "1210", defect)
            del inv["emsNo"]
        case "bonded_country_not_142":
            _need_mode(b, "1210", defect)
            inv["country"] = "609"
        case "net_over_gross":
            inv["netWeight"] = str(Decimal(inv["grossWeight"]) + Decimal("0.5"))
        case "qty1_mismatch":
            line = inv["items"][0]
            line["unit1"] = line["unit"]
            line["qty1"] = str(Decimal(line["qty"]) + 1)
        case "over_single_limit":
            target = SINGLE_LIMIT if len(order["items"]) > 1 else ANNUAL_LIMIT
            factor = target / Decimal(order["goodsValue"]) * Decimal("1.05")
            for line in order["items"]:  # scale every price so that goods alone exceed the limit
                line["price"] = _money(Decimal(line["price"]) * factor + 1)
            _apply_money(b)
    return b


def _need_mode(s: ShipmentSample, mode: str, defect: str) -> None:
    if s.mode != mode:
        raise ValueError(f"defect {defect!r} needs a {mode} sample, this one is {s.mode}")


def _other_person(rng: random.Random, id_number: str, avoid_name: str = "") -> Person:
    now = datetime(2026, 1, 1)
    p = _person(rng, now)
    while p.id_number == id_number or p.name == avoid_name:
        p = _person(rng, now)
    return p


# --- export shipments (spec §4) -----------------------------------------------------------------------------------

#: Goods a Chinese seller exports: (gcode, gname, spec, unit, unit1, unit2 or "", net kg of one unit, unit price range
#: in yuan). unit2 is the legal second unit of the HS code where it has one (kilograms for garments and shoes).
EXPORT_GOODS: tuple[tuple[str, str, str, str, str, str, Decimal, tuple[int, int]], ...] = (
    ("6214100000", "真丝围巾", "桑蚕丝 180×90cm", "015", "015", "035", Decimal("0.08"), (89, 320)),
    ("6912001000", "陶瓷茶具套装", "1壶6杯 景德镇白瓷", "006", "006", "035", Decimal("1.6"), (128, 560)),
    ("8518300000", "蓝牙耳机", "入耳式 降噪 白色", "008", "008", "", Decimal("0.06"), (79, 399)),
    ("9617001900", "不锈钢保温杯", "500ml 316不锈钢", "007", "007", "", Decimal("0.35"), (39, 129)),
    ("6404110000", "运动鞋", "网面 42码", "025", "025", "035", Decimal("0.7"), (159, 499)),
    ("6109100021", "纯棉T恤", "男款 L码 白色", "011", "011", "035", Decimal("0.2"), (29, 99)),
    ("0902109000", "龙井绿茶", "明前 250g/盒", "140", "035", "", Decimal("0.25"), (88, 368)),
    ("9503002100", "毛绒玩具熊", "40cm 填充棉", "007", "007", "", Decimal("0.3"), (35, 129)),
    ("4202920000", "帆布双肩包", "15.6寸 灰色", "007", "007", "", Decimal("0.6"), (69, 239)),
)
#: Where the parcels go: (country code, IATA airport shown as POD, currency of the sale). Currencies from the code
#: table of spec §3.6: export amounts are not fixed to 142.
EXPORT_DESTINATIONS: tuple[tuple[str, str, str], ...] = (
    ("502", "LAX", "502"), ("502", "JFK", "502"), ("303", "LHR", "303"), ("116", "NRT", "116"),
    ("132", "SIN", "132"), ("601", "SYD", "601"), ("304", "FRA", "300"), ("110", "HKG", "110"),
)  # fmt: skip
#: The overseas platform a 9610 sale is made on; a foreign platform without a customs code may write "无" (§4.1).
EXPORT_EBP = ("46012609BQ", "海南示例跨境电商平台有限公司")
EXPORT_EBC = ("4601260E35", "海南示例国际贸易有限公司")
EXPORT_OWNER = ("4601960K21", "海口示例日用品制造有限公司")  # producer / seller (ownerCode)


#: The order type (spec §4.1) of each export mode's sample: a B2C order (9610, 1210), a B2B order (9710), an overseas
#: warehouse's booking (9810, 海外仓订仓单); and the prefix of its number.
EXPORT_ORDER_TYPES = {"9610": "E", "1210": "E", "9710": "B", "9810": "W"}
EXPORT_ORDER_PREFIX = {"9610": "EX", "1210": "TZ", "9710": "BB", "9810": "OW"}


@dataclass
class ExportShipmentSample(_Parcel):
    """The four export legs of one parcel: order (CEB303), 收款单 (CEB403), waybill (CEB505), inventory (CEB603),
    as JSON payloads for :func:`gateway.render.render` (one document each, lines under ``items``)."""

    LEGS = (("CEB303", "order"), ("CEB403", "receipt"), ("CEB505", "waybill"), ("CEB603", "inventory"))
    order: dict[str, Any]
    receipt: dict[str, Any]
    waybill: dict[str, Any]
    inventory: dict[str, Any]

    @property
    def receipt_doc(self) -> dict[str, Any]:
        return self.doc("receipt")


def export_shipment(
    rng: random.Random, *, mode: str = "9610", n_items: int | None = None, now: datetime | None = None
) -> ExportShipmentSample:
    """One consistent export parcel. ``mode`` is 9610 (general CBEC export), 1210 (export from a special customs
    zone: iacCode, emsNo, itemRecordNo), 9710 (B2B direct export: a B2B order, orderType B) or 9810 (export to an
    overseas warehouse: the warehouse's booking, orderType W, numbered as one); ``n_items`` 1–100 lines (default 1–4).
    A B2B parcel has its 收款单 too, which its exporter need not send (EXPORT_MODES_WITHOUT_RECEIPT in
    gateway.reconcile); the random draws are those of a 9610 parcel, so a seed gives the same parcel in every mode.

    Kept by construction: totalPrice = price × qty (R4, also for export lines); order goodsValue = Σ totalPrice;
    收款单 charge = goodsValue + freight; inventory lines = order lines by gnum (itemNo, qty, price, totalPrice, unit,
    currency); qty1 = qty where unit1 = unit; qty2 exactly where unit2 is; netWeight ≤ grossWeight = waybill
    grossWeight; one currency of the code table for the whole sale; gnum 1..n; the inventory names the order
    (ebpCode + orderNo), the 收款单 (ebcCode + orderNo) and the waybill (logisticsCode + logisticsNo).
    """
    if mode not in EXPORT_ORDER_TYPES:
        raise ValueError(f"mode must be one of {', '.join(EXPORT_ORDER_TYPES)}, not {mode!r}")
    n = n_items if n_items is not None else rng.choice((1, 2, 2, 3, 4))
    if not 1 <= n <= 100:
        raise ValueError(f"n_items must be 1..100, not {n}")
    now = _anchor(now)
    zone = mode == "1210"

    placed = now - timedelta(minutes=rng.randint(180, 720))
    paid_at = placed + timedelta(minutes=rng.randint(1, 20), seconds=rng.randrange(60))
    order_time = placed + timedelta(minutes=rng.randint(1, 10), seconds=rng.randrange(60))
    receipt_time = paid_at + timedelta(minutes=rng.randint(5, 30), seconds=rng.randrange(60))
    waybill_time = order_time + timedelta(minutes=rng.randint(20, 60), seconds=rng.randrange(60))
    inventory_time = waybill_time + timedelta(minutes=rng.randint(10, 60), seconds=rng.randrange(60))

    country, pod, currency = rng.choice(EXPORT_DESTINATIONS)
    pay_code, pay_name, pay_prefix = rng.choice(PAYERS)
    log_code, log_name, log_prefix = rng.choice(CARRIERS)
    customs = rng.choice(CUSTOMS)
    order_no = f"{EXPORT_ORDER_PREFIX[mode]}{placed:%Y%m%d}{_digits(rng, 10)}"
    logistics_no = f"{log_prefix}{_digits(rng, 12)}CN"

    order_items: list[dict[str, Any]] = []
    inventory_items: list[dict[str, Any]] = []
    net = Decimal(0)
    goods_value = Decimal(0)
    for i in range(1, n + 1):
        k = rng.randrange(len(EXPORT_GOODS))
        gcode, gname, spec, unit, unit1, unit2, net_kg, (low, high) = EXPORT_GOODS[k]
        qty = rng.choice((1, 1, 2, 3, 5))
        price = Decimal(rng.randint(low * 100, high * 100)) / 100
        total = (price * qty).quantize(CENT)
        goods_value += total
        item_no = f"EX{_digits(rng, 8)}"
        item_name = f"{gname} {spec}"
        order_items.append({
            "gnum": i, "itemNo": item_no, "itemName": item_name, "itemDescribe": f"中国制造 {item_name}",
            "barCode": _ean13(rng, "142"), "unit": unit, "currency": currency, "qty": str(qty),
            "price": _money(price), "totalPrice": _money(total),
        })  # fmt: skip
        qty1 = Decimal(qty) if unit1 == unit else (net_kg * qty).normalize()
        line: dict[str, Any] = {
            "gnum": i, "itemNo": item_no, "itemName": item_name, "gcode": gcode, "gname": gname,
            "gmodel": f"品名:{gname};规格:{spec};品牌:无牌", "barCode": order_items[-1]["barCode"],
            "country": country, "currency": currency, "qty": str(qty), "qty1": str(qty1), "unit": unit,
            "unit1": unit1, "price": _money(price), "totalPrice": _money(total),
        }  # fmt: skip
        if unit2:
            line["qty2"], line["unit2"] = str((net_kg * qty).normalize()), unit2
        if zone:
            line["itemRecordNo"] = f"{20000 + k}"  # the good's number in the zone's account book
        inventory_items.append(line)
        net += net_kg * qty
    gross = (net * Decimal("1.15") + Decimal("0.2")).quantize(Decimal("0.001"))
    net = net.quantize(Decimal("0.001"))
    freight = Decimal(rng.randint(20, 120))

    order_doc: dict[str, Any] = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(order_time), "appStatus": "2",
        "orderType": EXPORT_ORDER_TYPES[mode], "orderNo": order_no, "ebpCode": EXPORT_EBP[0],
        "ebpName": EXPORT_EBP[1], "ebcCode": EXPORT_EBC[0], "ebcName": EXPORT_EBC[1], "goodsValue": _money(goods_value),
        "freight": _money(freight), "currency": currency, "items": order_items,
    }  # fmt: skip
    receipt_doc: dict[str, Any] = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(receipt_time), "appStatus": "2",
        "ebpCode": EXPORT_EBP[0], "ebpName": EXPORT_EBP[1], "ebcCode": EXPORT_EBC[0], "ebcName": EXPORT_EBC[1],
        "orderNo": order_no, "payCode": pay_code, "payName": pay_name,
        "payNo": f"{pay_prefix}{paid_at:%Y%m%d%H%M%S}{_digits(rng, 10)}", "charge": _money(goods_value + freight),
        "currency": currency, "accountingDate": _t(paid_at),
    }  # fmt: skip
    goods_info = "；".join(f"{it['itemName']}×{it['qty']}" for it in order_items)
    waybill_doc: dict[str, Any] = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(waybill_time), "appStatus": "2",
        "logisticsCode": log_code, "logisticsName": log_name, "logisticsNo": logistics_no,
        "freight": _money(freight), "insuredFee": "0.00", "currency": currency, "grossWeight": str(gross),
        "packNo": "1", "goodsInfo": goods_info if len(goods_info) <= 200 else goods_info[:199] + "…",
        "ebcCode": EXPORT_EBC[0], "ebcName": EXPORT_EBC[1], "ebcTelephone": "0898-6652" + _digits(rng, 4),
    }  # fmt: skip
    inventory_doc: dict[str, Any] = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(inventory_time), "appStatus": "2",
        "customsCode": customs, "ebpCode": EXPORT_EBP[0], "ebpName": EXPORT_EBP[1], "orderNo": order_no,
        "logisticsCode": log_code, "logisticsName": log_name, "logisticsNo": logistics_no,
        "copNo": f"EXP{inventory_time:%Y%m%d}{_digits(rng, 8)}", "ieFlag": "E", "portCode": customs,
        "ieDate": f"{inventory_time:%Y%m%d}", "statisticsFlag": "B" if zone else "A", "agentCode": AGENT[0],
        "agentName": AGENT[1], "ebcCode": EXPORT_EBC[0], "ebcName": EXPORT_EBC[1], "ownerCode": EXPORT_OWNER[0],
        "ownerName": EXPORT_OWNER[1], "tradeMode": mode, "country": country, "POD": pod,
        "freight": _money(freight), "fCurrency": currency, "fFlag": "3", "insuredFee": "0.00",
        "iCurrency": currency, "iFlag": "3", "wrapType": "2", "packNo": "1", "grossWeight": str(gross),
        "netWeight": str(net), "items": inventory_items,
    }  # fmt: skip
    airline, prefix = rng.choice(AIRLINES)
    serial = rng.randrange(10**7)
    inventory_doc.update({
        "trafMode": "5", "trafName": f"{airline}{rng.randint(1000, 9999)}", "voyageNo": f"{inventory_time:%Y%m%d}",
        "billNo": f"{prefix}-{serial:07d}{serial % 7}",
    })  # fmt: skip
    if zone:
        inventory_doc.update({"iacCode": AREA[0], "iacName": AREA[1], "emsNo": EMS_NO})

    def message(code: str, doc: dict[str, Any], sender: tuple[str, str]) -> dict[str, Any]:
        return {"type": code, "guid": _guid(rng), "version": "1.0", "baseTransfer": _base_transfer(*sender),
                "documents": [doc]}  # fmt: skip

    return ExportShipmentSample(
        order=message("CEB303", order_doc, EXPORT_EBP),
        receipt=message("CEB403", receipt_doc, (pay_code, pay_name)),
        waybill=message("CEB505", waybill_doc, (log_code, log_name)),
        inventory=message("CEB603", inventory_doc, AGENT),
    )


def render_export_shipment(
    s: ExportShipmentSample, *, signer: Callable[[etree._Element], None] | None = None
) -> dict[str, bytes]:
    """The four export legs as XML; ``signer`` signs the CEB603 (declared with appStatus 2, spec §2.7)."""
    return {code: render(p, signer=signer if code == "CEB603" else None) for code, p in s.payloads().items()}


#: Export defect name -> what it breaks; each is refused by the rules layer, none by the export schema.
EXPORT_DEFECTS: dict[str, str] = {
    "line_total_mismatch": "inventory line 1 totalPrice ≠ price × qty (R4, also for export inventory lines)",
    "empty_ebp_name": "order ebpName is empty: the 2022 export XSD lets it pass, the rules refuse it (spec §14)",
    "missing_ems_no_1210": "1210 inventory without emsNo; 1210 samples only",
    "net_over_gross": "inventory netWeight > grossWeight",
    "wrong_ie_flag": "inventory ieFlag is I on an export inventory",
}


def broken_export(s: ExportShipmentSample, defect: str) -> ExportShipmentSample:
    """A deep copy of ``s`` with one deliberate defect from :data:`EXPORT_DEFECTS`."""
    if defect not in EXPORT_DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; known: {', '.join(EXPORT_DEFECTS)}")
    b = copy.deepcopy(s)
    inv = b.inventory_doc
    match defect:
        case "line_total_mismatch":
            inv["items"][0]["totalPrice"] = _money(Decimal(inv["items"][0]["totalPrice"]) + 1)
        case "empty_ebp_name":
            b.order_doc["ebpName"] = ""
        case "missing_ems_no_1210":
            if b.mode != "1210":
                raise ValueError(f"defect {defect!r} needs a 1210 sample, this one is {b.mode}")
            del inv["emsNo"]
        case "net_over_gross":
            inv["netWeight"] = str(Decimal(inv["grossWeight"]) + Decimal("0.5"))
        case "wrong_ie_flag":
            inv["ieFlag"] = "I"
    return b


#: The supervision-site operator of the export samples' arrivals (CEB507 operatorCode / operatorName).
EXPORT_SITE = ("4601980S08", "海口示例跨境电商监管中心有限公司")
#: The transport messages of an export parcel, in the order they follow the inventory (spec §4.4 steps 2–3): the
#: 清单总分单 puts its waybill under the B/L, the site operator reports it arrived, the carrier that it left.
TRANSPORT = (("CEB607", "manifest"), ("CEB507", "arrival"), ("CEB509", "departure"))


def export_transport(
    parcels: list[ExportShipmentSample], rng: random.Random, *, released: datetime | None = None
) -> dict[str, dict[str, Any]]:
    """The 清单总分单 (CEB607), arrival (CEB507) and departure (CEB509) of parcels leaving on one flight, as JSON
    payloads for :func:`gateway.render.render`, one document each listing every parcel's waybill (gnum 1..n; the
    607 lines with the inventory's invtNo when it has one). The parcels share their first one's carrier, customs
    district and flight (trafName, voyageNo, billNo of its inventory); ``released`` (default: an hour after the last
    inventory) is when customs released them, and the three follow it in that order."""
    if not parcels:
        raise ValueError("export_transport needs at least one parcel")
    first = parcels[0].inventory_doc
    log_code, log_name, customs = first["logisticsCode"], first["logisticsName"], first["customsCode"]
    latest = max(datetime.strptime(p.inventory_doc["appTime"], "%Y%m%d%H%M%S") for p in parcels)
    released = released or latest + timedelta(hours=1)
    manifest_at = released + timedelta(minutes=rng.randint(5, 30), seconds=rng.randrange(60))
    arrival_at = manifest_at + timedelta(minutes=rng.randint(20, 90), seconds=rng.randrange(60))
    departure_at = arrival_at + timedelta(hours=rng.randint(2, 6), minutes=rng.randrange(60))
    bag = f"BAG{arrival_at:%Y%m%d}{_digits(rng, 4)}"
    truck = f"琼A·{rng.choice('BCDEFGHJK')}{_digits(rng, 4)}"
    gross = sum(Decimal(p.inventory_doc["grossWeight"]) for p in parcels)
    flight = {k: first[k] for k in ("trafMode", "trafName", "voyageNo", "billNo")}

    def lines(**extra: Callable[[ExportShipmentSample], dict[str, str]]) -> list[dict[str, Any]]:
        out = []
        for n, p in enumerate(parcels, 1):
            line: dict[str, Any] = {"gnum": n, "totalPackageNo": bag, "logisticsNo": p.inventory_doc["logisticsNo"]}
            for make in extra.values():
                line.update(make(p))
            out.append(line)
        return out

    def message(code: str, doc: dict[str, Any], sender: tuple[str, str]) -> dict[str, Any]:
        return {"type": code, "guid": _guid(rng), "version": "1.0", "baseTransfer": _base_transfer(*sender),
                "documents": [doc]}  # fmt: skip

    manifest = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(manifest_at), "appStatus": "2", "customsCode": customs,
        "copNo": f"ZF{manifest_at:%Y%m%d}{_digits(rng, 6)}", "agentCode": AGENT[0], "agentName": AGENT[1],
        **flight, "domesticTrafNo": truck, "grossWeight": str(gross), "logisticsCode": log_code,
        "logisticsName": log_name, "msgCount": "1", "msgSeqNo": "1",
        "items": lines(invt=lambda p: {"invtNo": p.inventory_doc["invtNo"]} if p.inventory_doc.get("invtNo") else {}),
    }  # fmt: skip
    arrival = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(arrival_at), "appStatus": "2", "customsCode": customs,
        "copNo": f"YD{arrival_at:%Y%m%d}{_digits(rng, 6)}", "operatorCode": EXPORT_SITE[0],
        "operatorName": EXPORT_SITE[1], "ieFlag": "E", "trafMode": flight["trafMode"], "billNo": flight["billNo"],
        "domesticTrafNo": truck, "logisticsCode": log_code, "logisticsName": log_name, "msgCount": "1",
        "msgSeqNo": "1", "items": lines(),
    }  # fmt: skip
    departure = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(departure_at + timedelta(minutes=5)), "appStatus": "2",
        "customsCode": customs, "copNo": f"LJ{departure_at:%Y%m%d}{_digits(rng, 6)}", "logisticsCode": log_code,
        "logisticsName": log_name, **flight, "leaveTime": _t(departure_at), "msgCount": "1", "msgSeqNo": "1",
        "items": lines(),
    }  # fmt: skip
    return {
        "CEB607": message("CEB607", manifest, AGENT),
        "CEB507": message("CEB507", arrival, EXPORT_SITE),
        "CEB509": message("CEB509", departure, (log_code, log_name)),
    }


#: The export files kept under tests/data/samples/ (file name -> how it is made), regenerated and compared by
#: tests/test_samples.py: ``export_sample_files(signer)`` with the test RSA key of tests/data/signing writes them.
EXPORT_SAMPLE_NOW = datetime(2026, 11, 20, 15, 0, 0)
EXPORT_SAMPLE_SEEDS: dict[str, int] = {"9610": 3, "1210": 21}
EXPORT_BROKEN_FILES: dict[str, tuple[str, str, str]] = {  # file -> (mode, defect, message code)
    "broken-CEB603-total-price.xml": ("9610", "line_total_mismatch", "CEB603"),
    "broken-CEB303-empty-ebp-name.xml": ("9610", "empty_ebp_name", "CEB303"),
    "broken-CEB603-1210-no-ems-no.xml": ("1210", "missing_ems_no_1210", "CEB603"),
}


def export_sample_files(signer: Callable[[etree._Element], None] | None) -> dict[str, bytes]:
    """The good export samples (``CEB303-9610.xml`` ... ``CEB603-1210.xml``, each parcel's transport messages
    ``CEB507/509/607-<mode>.xml``, the B-type 1210 inventory's summary application ``CEB701-1210.xml`` and the 9610
    parcel's return and its tally ``CEB213/215-9610.xml``) and the broken ones of :data:`EXPORT_BROKEN_FILES`, as
    bytes; ``signer`` signs the CEB603s, the transport messages and the CEB701 (declared, spec §2.7)."""
    shipments = {mode: export_shipment(random.Random(seed), mode=mode, now=EXPORT_SAMPLE_NOW)
                 for mode, seed in EXPORT_SAMPLE_SEEDS.items()}  # fmt: skip
    files = {f"{code}-{mode}.xml": xml for mode, s in shipments.items()
             for code, xml in render_export_shipment(s, signer=signer).items()}  # fmt: skip
    for name, (mode, defect, code) in EXPORT_BROKEN_FILES.items():
        files[name] = render_export_shipment(broken_export(shipments[mode], defect), signer=signer)[code]
    for mode, seed in EXPORT_SAMPLE_SEEDS.items():  # a generator of their own: the legs' files stay as they were
        for code, payload in export_transport([shipments[mode]], random.Random(seed)).items():
            files[f"{code}-{mode}.xml"] = render(payload, signer=signer)
    # the 1210 sample's inventory is B-type (statisticsFlag B): summarised the next morning, by the invtNo customs gave
    # it (the sandbox's first number of the day in that district)
    zone = shipments["1210"].inventory_doc
    invt_no = f"{zone['customsCode']}{EXPORT_SAMPLE_NOW:%Y}E{1:09d}"
    summary = summary_application(random.Random(EXPORT_SAMPLE_SEEDS["1210"]), [zone], [invt_no],
                                  now=EXPORT_SAMPLE_NOW + timedelta(hours=18))  # fmt: skip
    files["CEB701-1210.xml"] = render(summary, signer=signer)
    # the 9610 parcel comes back: the buyer refused it; its return (CEB213) names the inventory by the invtNo customs
    # gave it, and the site operator tallies the parcel on arrival (CEB215); both unsigned (optional, spec §2.7)
    general = shipments["9610"].inventory_doc
    invt_no = f"{general['customsCode']}{EXPORT_SAMPLE_NOW:%Y}E{1:09d}"
    rng = random.Random(EXPORT_SAMPLE_SEEDS["9610"])
    refund = export_return(rng, general, invt_no, now=EXPORT_SAMPLE_NOW + timedelta(days=6))
    files["CEB213-9610.xml"] = render(refund, signer=None)
    files["CEB215-9610.xml"] = render(return_tally(rng, refund, now=EXPORT_SAMPLE_NOW + timedelta(days=6, hours=3)),
                                      signer=None)  # fmt: skip
    return files


# --- the summary declaration (汇总申报, spec §4.4 step 4, A.29) ---------------------------------------------------


def summary_application(
    rng: random.Random, inventories: Sequence[dict[str, Any]], invt_nos: Sequence[str], *,
    now: datetime | None = None, summary_flag: str = "1",
) -> dict[str, Any]:
    """A CEB701 汇总申请单 JSON payload (for :func:`gateway.render.render`) consolidating B-type export inventories:
    ``inventories`` are their CEB603 heads (one consignor's: the application takes its agent, consignor and customs
    district from the first), ``invt_nos`` the numbers customs gave them (CEB604), one SummaryApplyList each. The
    declaring agent is also the customs broker (declAgentCode); one message, not split (msgCount 1)."""
    if not inventories or not invt_nos:
        raise ValueError("a summary application names at least one inventory")
    first = inventories[0]
    now = _anchor(now)
    doc: dict[str, Any] = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(now), "appStatus": "2",
        "customsCode": first["customsCode"], "copNo": f"SUM{now:%Y%m%d}{_digits(rng, 8)}",
        "agentCode": first["agentCode"], "agentName": first["agentName"], "ebcCode": first["ebcCode"],
        "ebcName": first["ebcName"], "declAgentCode": first["agentCode"], "declAgentName": first["agentName"],
        "summaryFlag": summary_flag, "itemNameFlag": "1", "msgCount": "1", "msgSeqNo": "1",
        "items": [{"invtNo": no} for no in invt_nos],
    }  # fmt: skip
    return {"type": "CEB701", "guid": _guid(rng), "version": "1.0",
            "baseTransfer": _base_transfer(first["agentCode"], first["agentName"]), "documents": [doc]}  # fmt: skip


# --- retail export returns (零售出口退货, 公告2020年第44号; spec §4.4 step 5, A.32, A.34) ------------------------


#: The return's supervision mode by the export inventory's (A.32): a special-zone export comes back as 1261.
RETURN_TRADE_MODE = {"1210": "1261"}


def import_cancellation(
    rng: random.Random, inventory: dict[str, Any], invt_no: str, *, now: datetime | None = None,
    reason: str = "买家取消订单",
) -> dict[str, Any]:
    """A CEB623 撤销申请单 JSON payload cancelling an import inventory (``inventory``: its CEB621 head and lines,
    ``invt_no`` the number customs gave it, A.7): the inventory's parties, waybill and buyer, declared by its agent."""
    return _import_reference("CEB623", rng, inventory, invt_no, now, reason, None)


def import_return(
    rng: random.Random, inventory: dict[str, Any], invt_no: str, *, now: datetime | None = None,
    items: Sequence[int] | None = None, reason: str = "质量问题，退货",
) -> dict[str, Any]:
    """A CEB625 退货申请单 JSON payload returning goods of a released import inventory (A.9): its items ``items``
    (gnum; all by default) in full, with the inventory's parties, waybill and buyer, declared by its agent."""
    wanted = set(items) if items is not None else None
    lines = [{k: line[k] for k in ("gnum", "gcode", "gname", "qty", "unit")}
             for line in inventory["items"] if wanted is None or int(line["gnum"]) in wanted]  # fmt: skip
    return _import_reference("CEB625", rng, inventory, invt_no, now, reason, lines)


def _import_reference(
    code: str, rng: random.Random, inventory: dict[str, Any], invt_no: str, now: datetime | None, reason: str,
    lines: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    now = _anchor(now)
    doc: dict[str, Any] = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(now), "appStatus": "2",
        **{k: inventory[k] for k in ("customsCode", "orderNo", "ebpCode", "ebpName", "ebcCode", "ebcName",
                                     "logisticsNo", "logisticsCode", "logisticsName", "buyerIdType", "buyerIdNumber",
                                     "buyerName", "buyerTelephone", "agentCode", "agentName")},
        "invtNo": invt_no, "reason": reason, **({"items": lines} if lines is not None else {}),
    }  # fmt: skip
    sender = _base_transfer(inventory["agentCode"], inventory["agentName"])
    return {"type": code, "guid": _guid(rng), "version": "1.0", "baseTransfer": sender, "documents": [doc]}


def export_return(
    rng: random.Random, inventory: dict[str, Any], invt_no: str, *, now: datetime | None = None,
    items: Sequence[int] | None = None, reason: str = "买家拒收，整单退回",
) -> dict[str, Any]:
    """A CEB213 零售出口退货申请单 JSON payload returning the goods of an export inventory (``inventory``: its CEB603
    head and lines, ``invt_no`` the number customs gave it): the inventory's items ``items`` (gnum; all by default)
    in full, flown back by the carrier that took them out, under the original waybill, 9661 (1261 for a 1210
    inventory). The declaring agent is the inventory's."""
    now = _anchor(now)
    wanted = set(items) if items is not None else None
    lines = [
        {k: line[k] for k in ("gnum", "gcode", "gname", "gmodel", "qty", "qty1", "unit", "unit1", "qty2", "unit2")
         if line.get(k) not in (None, "")}
        for line in inventory["items"] if wanted is None or int(line["gnum"]) in wanted
    ]  # fmt: skip
    flight = f"CZ{rng.randint(3000, 3999)}"
    doc: dict[str, Any] = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(now), "appStatus": "2",
        "customsCode": inventory["customsCode"], "ebpCode": inventory["ebpCode"], "ebpName": inventory["ebpName"],
        "ebcCode": inventory["ebcCode"], "ebcName": inventory["ebcName"], "logisticsNo": inventory["logisticsNo"],
        "logisticsCode": inventory["logisticsCode"], "logisticsName": inventory["logisticsName"],
        "coElNo": f"TH{now:%Y%m%d}{_digits(rng, 8)}", "invtNo": invt_no,
        "tradeMode": RETURN_TRADE_MODE.get(inventory["tradeMode"], "9661"),
        "agentCode": inventory["agentCode"], "agentName": inventory["agentName"],
        "billNo": f"784-{_digits(rng, 8)}", "ieFlag": "I", "trafMode": "5", "trafName": flight,
        "portCode": inventory["portCode"], "reason": reason, "country": inventory["country"],
        "voyageNo": f"{now:%Y%m%d}", "items": lines,
    }  # fmt: skip
    sender = _base_transfer(inventory["agentCode"], inventory["agentName"])
    return {"type": "CEB213", "guid": _guid(rng), "version": "1.0", "baseTransfer": sender, "documents": [doc]}


def return_tally(
    rng: random.Random, refund: dict[str, Any], *, now: datetime | None = None, with_invt_no: bool = True
) -> dict[str, Any]:
    """A CEB215 出口退运理货明细单 JSON payload: the supervision site operator tallies the parcel of a return
    (``refund``: a CEB213 payload) as it is unloaded, by its waybill and the transport that brought it;
    ``with_invt_no``: whether it names the return's invtNo (0..1 in A.34)."""
    now = _anchor(now)
    head = refund["documents"][0]
    doc: dict[str, Any] = {
        "guid": _guid(rng), "appType": "1", "appTime": _t(now), "appStatus": "2",
        "customsCode": head["customsCode"], "operatorCode": EXPORT_SITE[0], "operatorName": EXPORT_SITE[1],
        "logisticsCode": head["logisticsCode"], "logisticsName": head["logisticsName"],
        "logisticsNo": head["logisticsNo"], **({"invtNo": head["invtNo"]} if with_invt_no else {}),
        "coElNo": f"LH{now:%Y%m%d}{_digits(rng, 6)}", "billNo": head["billNo"], "ieFlag": "I",
        "trafMode": head["trafMode"], "trafName": head["trafName"], "voyageNo": head["voyageNo"],
        "location": f"退货区{rng.choice('ABC')}-{rng.randint(1, 20):02d}",
    }  # fmt: skip
    return {"type": "CEB215", "guid": _guid(rng), "version": "1.0",
            "baseTransfer": _base_transfer(*EXPORT_SITE), "documents": [doc]}
