"""Synthetic user behaviour streams: a shopper's sessions of views, searches, carts, purchases, ratings, returns.

The stream is a list of :class:`~comet_agents.events.UserEvent` (timestamps strictly increasing) with a few chat
messages; early on the user states one or two preferences in a chat message ("I'm vegetarian", "I usually wear
a size M"). Questions are computed from the generated event list itself (last / first purchase, how many
searches for a query, which brand got N stars, when an item was first viewed, ...) and from the stated
preferences, so every answer is exact and short.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from comet_agents.events import ChatMessage, Event, UserEvent

from . import vocab
from .common import QA, Sample, TokenCounter, approx_tokens, check_target, grow_stream, make_rng

__all__ = ["FAMILY", "generate", "ShopperSim", "iter_filler_events"]

FAMILY = "user_behaviour"


@dataclass(frozen=True)
class Category:
    name: str
    nouns: tuple[str, ...]
    modifiers: tuple[str, ...]
    brands: tuple[str, ...]
    price: tuple[int, int]
    extra: str | None = None  # name of an extra attribute ("size", "colour", ...)


def _t(block: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in block.split("|") if x.strip())


_COLOURS = tuple(c.capitalize() for c in vocab.COLOURS)

CATEGORIES: tuple[Category, ...] = (
    Category(
        "shoes",
        _t("running shoes|trail sneakers|leather boots|sandals|loafers|hiking boots|slip-ons|high-tops|ballet flats|"
           "chelsea boots|espadrilles|walking shoes"),
        _COLOURS,
        _t("Stridewell|Pacefield|Northtrail|Solemate|Kinetica|Hollis & Reed"),
        (25, 180),
        "size_eu",
    ),
    Category(
        "clothing",
        _t("t-shirt|hoodie|jeans|rain jacket|chinos|wool sweater|summer dress|linen shirt|cargo shorts|blazer|"
           "puffer vest|fleece|polo shirt|pyjamas|cardigan|overshirt"),
        _COLOURS,
        _t("Loomhaus|Fjordwear|Threadline|Cotton Commons|Marlowe|Urbanknit|Peak & Pine"),
        (12, 140),
        "size",
    ),
    Category(
        "electronics",
        _t("wireless earbuds|phone charger|bluetooth speaker|smartwatch|e-reader|USB-C hub|noise-cancelling headphones|"
           "webcam|mechanical keyboard|power bank|fitness tracker|portable SSD|action camera|desk microphone"),
        _t("Compact|Wireless|Portable|Smart|Pro|Slim|Rugged|Mini|Ultra|Budget|Waterproof|Foldable"),
        _t("Voltaic|Sonara|Pixelon|Brightcore|Auralis|Nexo|Kestrel Labs"),
        (15, 420),
        "colour",
    ),
    Category(
        "kitchen",
        _t("chef's knife|frying pan|coffee grinder|french press|rice cooker|blender|cutting board|kettle|"
           "mixing bowls|salad spinner|spice rack|stock pot|toaster|milk frother"),
        _t("Stainless|Ceramic|Nonstick|Cast iron|Bamboo|Glass|Electric|Manual|Copper|Enamel"),
        _t("Hearthware|Copperleaf|Kitchara|Brasswick|Saltmarsh|Fennel & Co"),
        (8, 160),
        None,
    ),
    Category(
        "groceries",
        _t("oat milk|dark chocolate|basmati rice|olive oil|tofu|green tea|granola|penne pasta|almonds|chickpeas|"
           "veggie burgers|peanut butter|coffee beans|sourdough bread|hummus|tomato sauce|lentils|honey"),
        _t("Organic|Fair-trade|Wholegrain|Smoked|Unsweetened|Roasted|Spicy|Fresh|Frozen|Local|Family-size"),
        _t("Greenacre|Harvest Lane|Miller's Table|Sunfield|Wildroot|Oakmeadow"),
        (2, 18),
        None,
    ),
    Category(
        "books",
        _t("cookbook|travel guide|mystery novel|poetry collection|graphic novel|biography|sci-fi novel|"
           "gardening handbook|history book|children's picture book|language course|puzzle book"),
        _t("Illustrated|Bestselling|Pocket|Hardcover|Paperback|Signed|Annotated|Large-print"),
        _t("Quillstone Press|Harbourlight Books|Inkwell House|Fablewood|Lanternfish Press"),
        (6, 45),
        None,
    ),
    Category(
        "beauty",
        _t("face cream|shampoo|sunscreen|lip balm|body lotion|face serum|hair oil|bath salts|hand cream|"
           "cleansing gel|eye cream|conditioner"),
        _t("Hydrating|Fragrance-free|Vitamin C|Mineral|Herbal|Overnight|Gentle|SPF 50|Travel-size|Soothing"),
        _t("Luminelle|Verdance|Puremoss|Solenne|Aqualis|Roseheart"),
        (4, 65),
        None,
    ),
    Category(
        "sports",
        _t("yoga mat|dumbbells|tennis racket|bike helmet|water bottle|resistance bands|foam roller|jump rope|"
           "swim goggles|climbing chalk|football|kettlebell|cycling gloves"),
        _COLOURS,
        _t("Apexline|Motiva|Ridgeback Sport|Fitloop|Tidecrest|Summit & Co"),
        (6, 150),
        "colour",
    ),
    Category(
        "home",
        _t("desk lamp|throw pillow|scented candle|bath towel|duvet cover|plant pot|wall clock|picture frame|"
           "storage basket|doormat|table runner|blackout curtains|laundry hamper"),
        _COLOURS,
        _t("Nestwell|Homely & Co|Driftwood Living|Casa Lumen|Willowby|Hygge House"),
        (7, 120),
        "colour",
    ),
    Category(
        "toys",
        _t("jigsaw puzzle|building blocks|board game|plush bear|toy train|kite|marble run|puppet theatre|"
           "science kit|dollhouse|remote-control car|card game"),
        _t("Wooden|Magnetic|Giant|Glow-in-the-dark|Musical|Deluxe|Mini|Classic|Travel"),
        _t("Playwright Toys|Tumbleweed|Brightbloom|Kitekin|Marblemoon"),
        (8, 90),
        None,
    ),
    Category(
        "garden",
        _t("watering can|pruning shears|seed tray|garden hose|compost bin|bird feeder|raised bed|garden gloves|"
           "string lights|hammock|trowel|rain barrel"),
        _t("Solar|Self-watering|Galvanised|Folding|Heavy-duty|Terracotta|Recycled|Expandable"),
        _t("Greenthumb|Bloomfield|Rootstock|Meadowsweet|Fernhill"),
        (5, 200),
        None,
    ),
    Category(
        "pet supplies",
        _t("dog bed|cat tree|chew toy|dog leash|litter box|pet carrier|scratching post|bird cage|fish tank|"
           "pet fountain|grooming brush|treat pouch"),
        _t("Chew-proof|Orthopedic|Grain-free|Interactive|Reflective|Self-cleaning|Cozy|Travel"),
        _t("Pawsome|Whiskerly|Tailwind Pets|Furbish|Barkley & Co"),
        (5, 160),
        None,
    ),
    Category(
        "office",
        _t("notebook|office chair|monitor stand|fountain pen|desk organiser|whiteboard|label maker|paper shredder|"
           "planner|laptop sleeve|sticky notes|filing cabinet"),
        _t("Ergonomic|Adjustable|Recycled|Refillable|Dotted|Magnetic|Standing|Leather|A5"),
        _t("Papergrove|Deskline|Inkhaven|Ledgerly|Scribewell"),
        (3, 260),
        None,
    ),
    Category(
        "outdoor",
        _t("tent|sleeping bag|camping stove|headlamp|backpack|trekking poles|cooler box|camping chair|"
           "rain poncho|water filter|compass|hammock straps"),
        _COLOURS,
        _t("Trailborne|Wildmark|Basecamp Co|Northslope|Cairnline"),
        (8, 320),
        "colour",
    ),
    Category(
        "music",
        _t("acoustic guitar|ukulele|keyboard|guitar strings|drum pads|violin bow|music stand|capo|harmonica|"
           "studio headphones|metronome|microphone stand"),
        _t("Acoustic|Electric|Beginner|Studio|Vintage|Travel|Concert|Compact"),
        _t("Cadenza|Tonewood|Resonant|Harmonia|Bluenote Gear"),
        (5, 380),
        None,
    ),
)

_SIZES = ("XS", "S", "M", "L", "XL", "XXL")
_DEVICES = ("mobile", "desktop", "tablet", "app")
_CHANNELS = ("direct", "email", "search_ad", "social", "newsletter", "push", "referral")
_PAYMENTS = ("card", "paypal", "gift_card", "bank_transfer", "apple_pay")
_RETURN_REASONS = _t(
    "too small|too large|arrived damaged|not as described|changed my mind|wrong colour|poor quality|"
    "arrived late|found it cheaper|duplicate order|stopped working|uncomfortable"
)
_AUDIENCES = _t("kids|beginners|travel|the office|winter|summer|running|small apartments|gifts|students")
_QUERY_FORMS = (
    "{noun}",
    "{noun}",
    "{brand} {noun}",
    "cheap {noun}",
    "best {noun}",
    "{noun} for {audience}",
    "{noun} sale",
    "{modifier} {noun}",
)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_GIFT_FOR = _t("niece|nephew|grandmother|grandfather|brother|sister|best friend|dad|mum|colleague|partner|godson")


@dataclass
class Item:
    name: str
    category: str
    brand: str
    price: float
    extra: dict[str, str | int] = field(default_factory=dict)


def _price(rng: random.Random, noun: str, lo: int, hi: int) -> float:
    # A stable base price per noun (the same noun costs about the same in every sample), +-25%.
    base = lo + (hi - lo) * random.Random(noun).random() ** 1.5
    whole = max(lo, int(base * rng.uniform(0.75, 1.25)))
    return round(whole + rng.choice((0.99, 0.49, 0.95, 0.5, 0.0, 0.25)), 2)


def _fmt(value: object) -> str:
    """A value exactly as the rendering writes it (``59.9``, ``5``); strings unquoted."""
    return value if isinstance(value, str) else json.dumps(value)


class ShopperSim:
    """A simulated shopper; :meth:`step` returns the next event(s), timestamps strictly increasing."""

    def __init__(self, rng: random.Random, *, zone_suffix: str | None = None) -> None:
        self.rng = rng
        self.t = datetime(2023, 1, 1) + timedelta(minutes=rng.randrange(0, 3 * 365 * 24 * 60))
        self.zone = zone_suffix if zone_suffix is not None else rng.choice(("", "", "Z"))
        k = rng.randint(3, 5)
        self.interests: list[Category] = rng.sample(list(CATEGORIES), k)
        self.items: dict[str, list[Item]] = {}
        self._names: set[str] = set()
        for cat in self.interests:
            self.items[cat.name] = [self._new_item(cat) for _ in range(rng.randint(5, 10))]
        self.queries: list[tuple[str, Category]] = []
        seen_q: set[str] = set()
        for cat in self.interests:
            for _ in range(rng.randint(2, 4)):
                q = self._query(cat)
                if q not in seen_q:
                    seen_q.add(q)
                    self.queries.append((q, cat))
        self.cart: list[Item] = []
        self.purchased: list[Item] = []
        self.rated: list[str] = []
        self.returned: list[str] = []
        self.session_left = 0
        self.session_index = 0
        self.focus: Category = self.interests[0]
        self.viewed_in_session: list[Item] = []

    # -- catalog
    def _new_item(self, cat: Category) -> Item:
        rng = self.rng
        for _ in range(100):
            noun = rng.choice(cat.nouns)
            name = f"{rng.choice(cat.modifiers)} {noun}"
            if cat.name == "books" and rng.random() < 0.5:
                adj, thing = rng.choice(vocab.ADJECTIVES), rng.choice(vocab.NOUNS)
                name = f"{noun.capitalize()}: The {adj.capitalize()} {thing.capitalize()}"
            name = name[0].upper() + name[1:]
            if name not in self._names:
                break
        else:  # pragma: no cover - vanishingly unlikely
            name = f"{name} {len(self._names)}"
        self._names.add(name)
        extra: dict[str, str | int] = {}
        if cat.extra == "size":
            extra["size"] = rng.choice(_SIZES)
        elif cat.extra == "size_eu":
            extra["size_eu"] = rng.randint(36, 46)
        elif cat.extra == "colour":
            extra["colour"] = rng.choice(vocab.COLOURS)
        return Item(name, cat.name, rng.choice(cat.brands), _price(rng, noun, *cat.price), extra)

    def _query(self, cat: Category) -> str:
        rng = self.rng
        form = rng.choice(_QUERY_FORMS)
        return form.format(
            noun=rng.choice(cat.nouns),
            brand=rng.choice(cat.brands),
            audience=rng.choice(_AUDIENCES),
            modifier=rng.choice(cat.modifiers).lower(),
        )

    # -- time
    def _stamp(self) -> str:
        return self.t.isoformat(timespec="seconds") + self.zone

    def _tick(self, lo: int = 4, hi: int = 240) -> None:
        self.t += timedelta(seconds=self.rng.randint(lo, hi))

    def _event(self, kind: str, item: Item | None = None, **attrs: str | int | float | bool) -> UserEvent:
        self._tick()
        return UserEvent(kind, None if item is None else item.name, attrs, self._stamp())

    def _item_attrs(self, item: Item) -> dict[str, str | int | float | bool]:
        out: dict[str, str | int | float | bool] = {"brand": item.brand, "category": item.category, "price": item.price}
        out.update(item.extra)
        return out

    # -- behaviour
    def step(self) -> list[Event]:
        rng = self.rng
        if self.session_left <= 0:
            self.session_left = rng.randint(3, 12)
            self.session_index += 1
            self.viewed_in_session = []
            self.focus = rng.choice(self.interests)
            gap = rng.choice((rng.randint(3600, 6 * 3600), rng.randint(6 * 3600, 3 * 86400), rng.randint(600, 3600)))
            self.t += timedelta(seconds=gap)
            if rng.random() < 0.6:
                return [self._event("session_start", device=rng.choice(_DEVICES), channel=rng.choice(_CHANNELS))]
        self.session_left -= 1
        options: list[tuple[str, float]] = [("search", 0.22), ("view", 0.40), ("wishlist", 0.03), ("chat", 0.025)]
        if self.viewed_in_session:
            options.append(("add_to_cart", 0.14))
        if self.cart:
            options += [("purchase", 0.12), ("remove_from_cart", 0.03)]
        unrated = [i for i in self.purchased if i.name not in self.rated]
        if unrated:
            options.append(("rating", 0.07))
        returnable = [i for i in self.purchased if i.name not in self.returned]
        if returnable:
            options.append(("return", 0.02))
        action = rng.choices([a for a, _ in options], weights=[w for _, w in options], k=1)[0]

        if action == "search":
            q, cat = rng.choice(self.queries)
            self.focus = cat
            return [self._event("search", query=q, results=rng.randint(0, 480))]
        if action in ("view", "wishlist"):
            item = rng.choice(self.items[self.focus.name])
            if action == "view":
                self.viewed_in_session.append(item)
                return [self._event("view", item, **self._item_attrs(item))]
            return [self._event("wishlist", item, price=item.price)]
        if action == "add_to_cart":
            item = rng.choice(self.viewed_in_session)
            if item not in self.cart:
                self.cart.append(item)
            return [self._event("add_to_cart", item, price=item.price, quantity=rng.choice((1, 1, 1, 2, 3)))]
        if action == "remove_from_cart":
            item = self.cart.pop(rng.randrange(len(self.cart)))
            return [self._event("remove_from_cart", item)]
        if action == "purchase":
            item = self.cart.pop(rng.randrange(len(self.cart)))
            self.purchased.append(item)
            attrs = self._item_attrs(item)
            attrs.update(quantity=1, payment=rng.choice(_PAYMENTS))
            return [self._event("purchase", item, **attrs)]
        if action == "rating":
            item = rng.choice(unrated)
            self.rated.append(item.name)
            stars = rng.choices((1, 2, 3, 4, 5), weights=(1, 1, 2, 3, 3), k=1)[0]
            return [self._event("rating", item, stars=stars, brand=item.brand)]
        if action == "return":
            item = rng.choice(returnable)
            self.returned.append(item.name)
            return [self._event("return", item, reason=rng.choice(_RETURN_REASONS))]
        # chat with the shop assistant about an item
        item = rng.choice(self.items[self.focus.name])
        self._tick()
        q, a = rng.choice(_ITEM_CHAT)
        return [
            ChatMessage("user", q.format(item=item.name.lower(), brand=item.brand)),
            ChatMessage("assistant", a.format(item=item.name.lower(), brand=item.brand, days=rng.randint(2, 9))),
        ]


_ITEM_CHAT = (
    ("Is the {item} in stock?", "Yes, the {item} is in stock and ships within {days} days."),
    ("How long does delivery take for the {item}?", "Standard delivery for the {item} takes about {days} days."),
    ("Does {brand} offer a warranty on the {item}?", "{brand} covers the {item} with a two-year warranty."),
    ("Can I return the {item} if it doesn't fit?", "Yes, you can return it within 30 days."),
    ("Any discount codes for the {item}?", "There is no code right now, but the {item} is often on sale."),
    ("What do other people say about the {item}?", "Most reviews of the {item} mention good value for money."),
    ("Is the {item} good as a gift?", "Many customers buy the {item} as a gift; gift wrapping is available."),
    ("Do you have the {item} in other colours?", "The {item} comes in several colours; see the product page."),
)


# ----------------------------------------------------------------------------------------------- preferences

# slot -> (values, statements, questions). The answer is the value itself.
_PREFERENCES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "diet": (
        _t("vegetarian|vegan|pescatarian|gluten-free|dairy-free|low-carb"),
        _t("Just so you know, I'm {v}.|I'm {v}, so keep that in mind for any food suggestions.|"
           "Heads up: I follow a {v} diet.|Before we start - I eat {v} only, please remember that."),
        _t("What diet does the user follow?|Which dietary preference did the user mention?|"
           "What kind of diet is the user on?"),
    ),
    "clothing_size": (
        _SIZES,
        _t("I prefer size {v} for tops.|I usually wear a size {v}.|Please only show me clothes in size {v}.|"
           "For clothes I'm a {v}, in case that helps."),
        _t("What clothing size does the user prefer?|Which size does the user usually wear?|"
           "What size should clothes for the user be?"),
    ),
    "shoe_size": (
        tuple(str(n) for n in range(36, 47)),
        _t("My shoe size is {v} (EU).|I wear EU size {v} shoes.|Shoes need to be size {v} for me."),
        _t("What shoe size does the user wear?|Which EU shoe size did the user give?"),
    ),
    "colour": (
        vocab.COLOURS,
        _t("My favourite colour is {v}, so I'd love options in {v}.|I prefer {v} things whenever possible.|"
           "If there's a {v} version, show me that one first."),
        _t("Which colour does the user prefer?|What is the user's favourite colour?"),
    ),
    "budget": (
        tuple(str(n) for n in range(20, 305, 5)),
        _t("I try to keep each order under {v} euros.|My budget is {v} euros per order, max.|"
           "Please don't suggest anything over {v} euros."),
        _t("What is the user's budget per order, in euros?|"
           "What is the most the user wants to spend per order, in euros?"),
    ),
    "allergy": (
        _t("peanuts|latex|lanolin|fragrance|nickel|wool|soy|sesame|tree nuts|lavender"),
        _t("I'm allergic to {v}, so please avoid anything with it.|Careful with suggestions - I have a {v} allergy."),
        _t("What is the user allergic to?|Which allergy did the user mention?"),
    ),
    "delivery_day": (
        _WEEKDAYS,
        _t("Deliveries work best for me on {v}s.|Please schedule deliveries for {v} if you can.|"
           "I'm only home on {v}s, so deliveries should come then."),
        _t("On which day does the user prefer deliveries?|Which weekday is best for the user's deliveries?"),
    ),
    "gift_for": (
        _GIFT_FOR,
        _t("I'm shopping for my {v}'s birthday this month.|Most of what I buy this month is a present for my {v}."),
        _t("Who is the user shopping for?|Who is the present for?"),
    ),
}

_ACKS = _t(
    "Got it, I'll keep that in mind.|Thanks for letting me know!|Noted - I'll tailor my suggestions.|"
    "Understood. I'll remember that.|Great, that helps me find the right products.|Perfect, noted."
)


# ----------------------------------------------------------------------------------------------- questions

_QA_FORMS: dict[str, tuple[str, ...]] = {
    "last_purchase": _t("What did the user buy last?|What was the user's most recent purchase?|"
                        "Which item did the user purchase most recently?|What was the last thing the user bought?"),
    "first_purchase": _t("What did the user buy first?|What was the user's first purchase?|"
                         "Which item did the user purchase first?"),
    "purchase_count": _t("How many purchases did the user make?|How many times did the user buy something?|"
                         "How many items did the user purchase in total?"),
    "search_count": _t('How many times did the user search for "{x}"?|How often did the user search for "{x}"?|'
                       'How many searches for "{x}" did the user make?'),
    "brand_stars": _t("Which brand did the user rate {n} {stars}?|"
                      "The user gave {n} {stars} to a product from which brand?|"
                      "Which brand got a {n}-star rating from the user?"),
    "first_view_time": _t("When did the user first view {x}?|At what time did the user first look at {x}?|"
                          "When was {x} first viewed?"),
    "item_stars": _t("How many stars did the user give {x}?|What rating did the user give {x}?"),
    "return_reason": _t("Why did the user return {x}?|What reason did the user give for returning {x}?"),
    "returned_item": _t("Which item did the user return?|What did the user send back?"),
    "item_price": _t("What did {x} cost?|What was the price of {x}?|How much was {x}?"),
    "first_search": _t("What did the user search for first?|What was the user's first search query?"),
    "most_viewed_category": _t("Which category did the user view most often?|"
                               "In which category did the user view the most items?"),
    "cart_count": _t("How many times did the user add something to the cart?|How many add-to-cart events were there?"),
    "view_count": _t("How many times did the user view {x}?|How often did the user look at {x}?"),
}


def _user_events(events: list[Event]) -> list[UserEvent]:
    return [e for e in events if isinstance(e, UserEvent)]


def _candidates(events: list[Event], rng: random.Random) -> list[tuple[str, str, str]]:
    """(kind, question, answer) candidates computed from the event list."""
    ue = _user_events(events)
    by_kind: dict[str, list[UserEvent]] = {}
    for e in ue:
        by_kind.setdefault(e.kind, []).append(e)
    purchases = by_kind.get("purchase", [])
    searches = by_kind.get("search", [])
    ratings = by_kind.get("rating", [])
    views = by_kind.get("view", [])
    returns = by_kind.get("return", [])
    out: list[tuple[str, str, str]] = []

    def q(kind: str, **fmt: str) -> str:
        return rng.choice(_QA_FORMS[kind]).format(**fmt)

    if purchases:
        out.append(("last_purchase", q("last_purchase"), purchases[-1].item or ""))
        out.append(("purchase_count", q("purchase_count"), str(len(purchases))))
        if len(purchases) > 1:
            out.append(("first_purchase", q("first_purchase"), purchases[0].item or ""))
        p = rng.choice(purchases)
        out.append(("item_price", q("item_price", x=p.item or ""), _fmt(p.attributes["price"])))
    if searches:
        counts = Counter(str(e.attributes["query"]) for e in searches)
        query = rng.choice(sorted(counts))
        out.append(("search_count", q("search_count", x=query), str(counts[query])))
        out.append(("first_search", q("first_search"), str(searches[0].attributes["query"])))
    if ratings:
        brands_by_stars: dict[int, list[str]] = {}
        for e in ratings:
            brands_by_stars.setdefault(int(e.attributes["stars"]), []).append(str(e.attributes["brand"]))
        unique = sorted(n for n, bs in brands_by_stars.items() if len(set(bs)) == 1)
        if unique:
            n = rng.choice(unique)
            out.append(("brand_stars", q("brand_stars", n=str(n), stars="star" if n == 1 else "stars"),
                        brands_by_stars[n][0]))
        r = rng.choice(ratings)
        out.append(("item_stars", q("item_stars", x=r.item or ""), _fmt(r.attributes["stars"])))
    if views:
        first_seen: dict[str, str] = {}
        for e in views:
            first_seen.setdefault(e.item or "", e.timestamp or "")
        item = rng.choice(sorted(first_seen))
        out.append(("first_view_time", q("first_view_time", x=item), first_seen[item]))
        view_counts = Counter(e.item or "" for e in views)
        item = rng.choice(sorted(view_counts))
        out.append(("view_count", q("view_count", x=item), str(view_counts[item])))
        cats = Counter(str(e.attributes["category"]) for e in views).most_common()
        if len(cats) == 1 or cats[0][1] > cats[1][1]:
            out.append(("most_viewed_category", q("most_viewed_category"), cats[0][0]))
    if returns:
        r = rng.choice(returns)
        out.append(("return_reason", q("return_reason", x=r.item or ""), str(r.attributes["reason"])))
        if len(returns) == 1:
            out.append(("returned_item", q("returned_item"), returns[0].item or ""))
    carts = by_kind.get("add_to_cart", [])
    if carts:
        out.append(("cart_count", q("cart_count"), str(len(carts))))
    return out


# ----------------------------------------------------------------------------------------------- generation


def iter_filler_events(rng: random.Random) -> Iterator[Event]:
    """An endless stream of shopper events (no stated preferences), e.g. as passkey filler."""
    sim = ShopperSim(rng)
    while True:
        yield from sim.step()


def generate(seed: int, target_tokens: int, count_tokens: TokenCounter = approx_tokens) -> Sample:
    """A shopper's event stream of about ``target_tokens`` tokens with 3-7 QAs about it."""
    check_target(target_tokens)
    rng = make_rng(seed, FAMILY)
    sim = ShopperSim(random.Random(rng.getrandbits(64)))
    qa_rng = random.Random(rng.getrandbits(64))

    # One or two preferences, stated in the first ~12% of the stream.
    slots = rng.sample(sorted(_PREFERENCES), rng.choice((1, 1, 2)))
    prefs: list[dict[str, str]] = []
    for slot in slots:
        values, statements, _ = _PREFERENCES[slot]
        value = rng.choice(values)
        prefs.append({"slot": slot, "value": value, "text": rng.choice(statements).format(v=value)})
    at = sorted(rng.uniform(0.0, 0.12) for _ in prefs)
    pending = list(zip(at, prefs))
    events: list[Event] = []
    stated: list[dict[str, str]] = []

    def next_piece(remaining: int) -> list[Event]:
        used = target_tokens - remaining
        if pending and used >= pending[0][0] * target_tokens:
            _, pref = pending.pop(0)
            stated.append(pref)
            piece: list[Event] = [ChatMessage("user", pref["text"]), ChatMessage("assistant", rng.choice(_ACKS))]
        else:
            piece = sim.step()
        events.extend(piece)
        return piece

    stream = grow_stream(next_piece, target_tokens, count_tokens)

    qas: list[QA] = []
    kinds: list[str] = []
    for pref in stated:
        qas.append(QA(rng.choice(_PREFERENCES[pref["slot"]][2]), pref["value"]))
        kinds.append(f"preference:{pref['slot']}")
    cands = _candidates(events, qa_rng)
    for kind, question, answer in qa_rng.sample(cands, min(len(cands), qa_rng.randint(3, 5))):
        qas.append(QA(question, answer))
        kinds.append(kind)
    meta = {
        "seed": seed,
        "target_tokens": target_tokens,
        "tokens": count_tokens(stream),
        "events": len(events),
        "preferences": [{"slot": p["slot"], "value": p["value"]} for p in stated],
        "qa_kinds": kinds,
    }
    return Sample(FAMILY, stream, qas, meta)

