"""The vocabulary of the synthetic shop: categories, product types, attributes, options, brands, words.

Everything the catalogue generator draws from lives here, as data. The rules the data obeys (checked
by tests/environment/test_webshop_catalogue.py, because WebShop's reward depends on them):

- Attributes of one category never fuzzy-match each other (rapidfuzz token_set_ratio <= 85, the
  threshold of WebShop's reward) and none is a substring of another, so owning one attribute never
  counts as owning another.
- Option values of one pool are distinct after WebShop's color normalization and, for the
  fuzzy-matched kinds (every kind but `size`), never fuzzy-match each other. Values that differ only
  by a number ("14 inch" / "18 inch", "pack of 2" / "pack of 3") live under `size`, which WebShop's
  reward matches exactly, since token_set_ratio would call them equal.
- No option value is also a button of the item page.

Product categories are breadcrumbs as on Amazon (WebShop's `product_category`, "a › b › c"); `query`
is the search phrase a product was scraped under (WebShop's `query`); `nouns` are the words of the
type name that a part-of-speech tagger would call nouns (used for the title-noun part of r_type).
"""

from __future__ import annotations

from dataclasses import dataclass

# Attribute kinds: how an attribute phrase reads in an instruction.
ADJ = "adj"    # "that is gluten free", "a gluten free ..."
NOUN = "noun"  # "with lumbar support"


@dataclass(frozen=True)
class ProductType:
    """One kind of product (WebShop has thousands; these forty span its five categories)."""

    name: str                      # singular, as an instruction names it ("hair extension")
    query: str                     # the search phrase the products were "scraped" under
    category: str                  # one of CATEGORIES
    breadcrumb: str                # product_category, "a › b › c"
    nouns: tuple[str, ...]         # noun words of the name
    attributes: tuple[tuple[str, str], ...]  # (phrase, ADJ|NOUN)
    options: tuple[tuple[str, tuple[str, ...]], ...]  # (option name, value pool)
    price: tuple[float, float]
    mass: bool = False             # "some olive oil" rather than "an olive oil"
    extras: tuple[str, ...] = ()   # title endings ("for Women", "Set")


CATEGORIES = ("beauty", "grocery", "fashion", "furniture", "electronics")

# Attributes every product of a category may have, besides its type's own.
COMMON_ATTRIBUTES: dict[str, tuple[tuple[str, str], ...]] = {
    "beauty": (("cruelty free", ADJ), ("dermatologist tested", ADJ)),
    "grocery": (("non gmo", ADJ), ("kosher certified", ADJ)),
    "fashion": (("machine wash", NOUN), ("imported fabric", NOUN)),
    "furniture": (("easy assembly", NOUN), ("living room", NOUN)),
    "electronics": (("easy to use", ADJ), ("one year warranty", NOUN)),
}

_BEAUTY = "Beauty & Personal Care"
_FOOD = "Grocery & Gourmet Food"
_FASHION = "Clothing, Shoes & Jewelry"
_HOME = "Home & Kitchen"
_ELEC = "Electronics"
_PHONE = "Cell Phones & Accessories"

SIZES_APPAREL = ("x-small", "small", "medium", "large", "x-large", "xx-large")


def _t(name, query, category, breadcrumb, nouns, attributes, options, price, mass=False, extras=()):
    return ProductType(name, query, category, " › ".join(breadcrumb), tuple(nouns), tuple(attributes),
                       tuple((k, tuple(v)) for k, v in options), price, mass, tuple(extras))


PRODUCT_TYPES: tuple[ProductType, ...] = (
    # --- beauty ------------------------------------------------------------------------------------
    _t("hair extension", "hair extensions", "beauty",
       (_BEAUTY, "Hair Care", "Hair Extensions, Wigs & Accessories", "Hair Extensions"), ("hair", "extension"),
       (("natural looking", ADJ), ("clip-in", ADJ), ("heat resistant", ADJ), ("tangle free", ADJ),
        ("human hair", NOUN), ("high density", NOUN)),
       (("color", ("black", "brown", "blonde", "auburn", "burgundy", "platinum")),
        ("size", ("14 inch", "16 inch", "18 inch", "20 inch", "22 inch"))), (12, 60), extras=("for Women",)),
    _t("shampoo", "shampoo", "beauty",
       (_BEAUTY, "Hair Care", "Shampoo & Conditioner", "Shampoos"), ("shampoo",),
       (("sulfate free", ADJ), ("paraben free", ADJ), ("tea tree", NOUN), ("dry scalp", NOUN),
        ("natural ingredients", NOUN), ("color safe", ADJ)),
       (("scent", ("lavender", "coconut", "citrus", "eucalyptus", "unscented", "vanilla")),
        ("size", ("8 fl oz", "12 fl oz", "16 fl oz", "32 fl oz"))), (6, 30), mass=True),
    _t("lipstick", "lipstick", "beauty",
       (_BEAUTY, "Makeup", "Lips", "Lipstick"), ("lipstick",),
       (("long lasting", ADJ), ("matte finish", NOUN), ("highly pigmented", ADJ), ("moisturizing formula", NOUN),
        ("vegan", ADJ), ("transfer proof", ADJ)),
       (("color", ("red", "nude", "pink", "coral", "plum", "mauve")),), (5, 35)),
    _t("deodorant", "deodorant", "beauty",
       (_BEAUTY, "Personal Care", "Deodorants & Antiperspirants", "Deodorants"), ("deodorant",),
       (("aluminum free", ADJ), ("sensitive skin", NOUN), ("48 hour protection", NOUN),
        ("natural ingredients", NOUN), ("baking soda free", ADJ), ("travel size", NOUN)),
       (("scent", ("citrus", "lavender", "unscented", "coconut", "cedarwood", "vanilla")),
        ("size", ("2.65 ounce", "3 ounce (pack of 2)", "3 ounce (pack of 3)"))), (6, 25)),
    _t("face moisturizer", "face moisturizer", "beauty",
       (_BEAUTY, "Skin Care", "Face", "Creams & Moisturizers"), ("face", "moisturizer"),
       (("hyaluronic acid", NOUN), ("fragrance free", ADJ), ("oil free", ADJ), ("sensitive skin", NOUN),
        ("spf 30", NOUN), ("anti aging", ADJ)),
       (("size", ("1.7 fl oz", "2.5 fl oz", "4 fl oz")),), (10, 60)),
    _t("nail polish", "nail polish", "beauty",
       (_BEAUTY, "Foot, Hand & Nail Care", "Nail Art & Polish", "Nail Polish"), ("nail", "polish"),
       (("quick drying", ADJ), ("long lasting", ADJ), ("non toxic", ADJ), ("chip resistant", ADJ),
        ("glossy finish", NOUN), ("vegan", ADJ)),
       (("color", ("red", "pink", "black", "nude", "teal", "lilac")),), (4, 20), mass=True),
    _t("makeup brush set", "makeup brushes", "beauty",
       (_BEAUTY, "Tools & Accessories", "Makeup Brushes & Tools", "Brush Sets"), ("makeup", "brush", "set"),
       (("synthetic bristles", NOUN), ("travel case", NOUN), ("easy to clean", ADJ), ("wooden handles", NOUN),
        ("vegan", ADJ), ("professional quality", NOUN)),
       (("color", ("black", "pink", "white", "gold", "silver")),
        ("size", ("10 pieces", "14 pieces", "18 pieces"))), (8, 40)),
    _t("electric toothbrush", "electric toothbrush", "beauty",
       (_BEAUTY, "Oral Care", "Toothbrushes & Accessories", "Power Toothbrushes"), ("toothbrush",),
       (("rechargeable battery", NOUN), ("smart timer", NOUN), ("travel case", NOUN), ("sensitive teeth", NOUN),
        ("soft bristles", NOUN), ("pressure sensor", NOUN)),
       (("color", ("black", "white", "pink", "blue")),), (20, 90)),
    # --- grocery -----------------------------------------------------------------------------------
    _t("protein bar", "protein bars", "grocery",
       (_FOOD, "Snack Foods", "Bars", "Protein Bars"), ("protein", "bar"),
       (("gluten free", ADJ), ("high protein", NOUN), ("low sugar", ADJ), ("keto friendly", ADJ),
        ("individually wrapped", ADJ), ("plant based", ADJ)),
       (("flavor name", ("peanut butter", "cookie dough", "birthday cake", "salted toffee", "vanilla almond")),
        ("size", ("12 count", "15 count", "24 count"))), (12, 45)),
    _t("whole bean coffee", "coffee beans", "grocery",
       (_FOOD, "Beverages", "Coffee, Tea & Cocoa", "Coffee", "Whole Coffee Beans"), ("bean", "coffee"),
       (("usda organic", ADJ), ("fair trade", ADJ), ("medium roast", NOUN), ("single origin", ADJ),
        ("low acid", ADJ), ("small batch", ADJ)),
       (("flavor name", ("colombian", "french roast", "breakfast blend", "hazelnut", "decaf")),
        ("size", ("12 ounce", "2 pound", "5 pound"))), (9, 45), mass=True),
    _t("herbal tea", "herbal tea", "grocery",
       (_FOOD, "Beverages", "Coffee, Tea & Cocoa", "Tea", "Herbal Tea"), ("tea",),
       (("caffeine free", ADJ), ("usda organic", ADJ), ("individually wrapped", ADJ), ("gluten free", ADJ),
        ("no artificial flavors", NOUN), ("compostable bags", NOUN)),
       (("flavor name", ("chamomile", "peppermint", "ginger", "hibiscus", "rooibos")),
        ("size", ("20 count", "40 count", "20 count (pack of 6)"))), (4, 30), mass=True),
    _t("trail mix", "trail mix", "grocery",
       (_FOOD, "Snack Foods", "Nuts & Seeds", "Trail Mix"), ("trail", "mix"),
       (("gluten free", ADJ), ("high protein", NOUN), ("resealable bag", NOUN), ("no artificial flavors", NOUN),
        ("low sodium", ADJ), ("roasted nuts", NOUN)),
       (("flavor name", ("sweet and salty", "tropical", "mixed berry", "honey nut", "classic")),
        ("size", ("8 ounce", "26 ounce", "2 pound"))), (5, 25), mass=True),
    _t("olive oil", "olive oil", "grocery",
       (_FOOD, "Pantry Staples", "Cooking Oils, Vinegars & Sprays", "Oils", "Olive Oil"), ("oil",),
       (("extra virgin", ADJ), ("cold pressed", ADJ), ("usda organic", ADJ), ("glass bottle", NOUN),
        ("first harvest", NOUN), ("single origin", ADJ)),
       (("size", ("16.9 fl oz", "25.3 fl oz", "33.8 fl oz")),), (8, 40), mass=True),
    _t("chocolate bar", "dark chocolate", "grocery",
       (_FOOD, "Candy & Chocolate", "Chocolate", "Chocolate Bars"), ("chocolate", "bar"),
       (("fair trade", ADJ), ("dairy free", ADJ), ("low sugar", ADJ), ("plant based", ADJ),
        ("gluten free", ADJ), ("individually wrapped", ADJ)),
       (("flavor name", ("sea salt", "almond", "raspberry", "orange", "espresso")),
        ("size", ("3.5 ounce (pack of 6)", "3.5 ounce (pack of 12)"))), (10, 40)),
    _t("beef jerky", "beef jerky", "grocery",
       (_FOOD, "Meat & Seafood", "Jerky & Dried Meats", "Beef Jerky"), ("beef", "jerky"),
       (("high protein", NOUN), ("gluten free", ADJ), ("grass fed", ADJ), ("low fat", ADJ),
        ("no added msg", NOUN), ("resealable bag", NOUN)),
       (("flavor name", ("original", "teriyaki", "peppered", "sweet and spicy")),
        ("size", ("2.85 ounce", "10 ounce", "3.25 ounce (pack of 4)"))), (8, 40), mass=True),
    _t("raw honey", "honey", "grocery",
       (_FOOD, "Pantry Staples", "Jams, Jellies & Sweet Spreads", "Honey"), ("honey",),
       (("unfiltered", ADJ), ("usda organic", ADJ), ("glass jar", NOUN), ("gluten free", ADJ),
        ("locally sourced", ADJ), ("no added sugar", NOUN)),
       (("size", ("12 ounce", "16 ounce", "32 ounce")),), (6, 30), mass=True),
    # --- fashion -----------------------------------------------------------------------------------
    _t("men's t-shirt", "men t shirts", "fashion",
       (_FASHION, "Men", "Clothing", "Shirts", "T-Shirts"), ("men", "shirt"),
       (("slim fit", NOUN), ("short sleeve", NOUN), ("crew neck", NOUN), ("moisture wicking", ADJ),
        ("tagless", ADJ), ("cotton jersey", NOUN)),
       (("color", ("black", "white", "navy", "grey", "olive", "burgundy")), ("size", SIZES_APPAREL[1:])),
       (8, 35)),
    _t("women's sneaker", "women sneakers", "fashion",
       (_FASHION, "Women", "Shoes", "Fashion Sneakers"), ("women", "sneaker"),
       (("rubber sole", NOUN), ("lace up", ADJ), ("memory foam", NOUN), ("breathable mesh", NOUN),
        ("non slip", ADJ), ("arch support", NOUN)),
       (("color", ("white", "black", "pink", "grey", "navy", "beige")),
        ("size", ("6", "6.5", "7", "7.5", "8", "8.5", "9", "10"))), (25, 90)),
    _t("yoga pants", "yoga pants", "fashion",
       (_FASHION, "Women", "Clothing", "Active", "Active Pants", "Yoga Pants"), ("yoga", "pants"),
       (("high waist", NOUN), ("tummy control", NOUN), ("four way stretch", NOUN), ("moisture wicking", ADJ),
        ("side pockets", NOUN), ("squat proof", ADJ)),
       (("color", ("black", "navy", "grey", "olive", "purple", "teal")), ("size", SIZES_APPAREL[:5])),
       (15, 50), mass=True, extras=("for Women",)),
    _t("rain jacket", "rain jacket", "fashion",
       (_FASHION, "Men", "Clothing", "Jackets & Coats", "Rain Jackets"), ("rain", "jacket"),
       (("water resistant", ADJ), ("packable hood", NOUN), ("zip pockets", NOUN), ("lightweight", ADJ),
        ("windproof", ADJ), ("adjustable cuffs", NOUN)),
       (("color", ("black", "navy", "red", "olive", "yellow")), ("size", SIZES_APPAREL[1:])), (30, 120)),
    _t("summer dress", "summer dress", "fashion",
       (_FASHION, "Women", "Clothing", "Dresses", "Casual"), ("summer", "dress"),
       (("short sleeve", NOUN), ("side pockets", NOUN), ("floral print", NOUN), ("v neck", NOUN),
        ("flowy fit", NOUN), ("knee length", ADJ)),
       (("color", ("blue", "white", "pink", "green", "yellow", "black")), ("size", SIZES_APPAREL[:5])),
       (18, 60), extras=("for Women",)),
    _t("athletic socks", "athletic socks", "fashion",
       (_FASHION, "Men", "Clothing", "Socks", "Athletic Socks"), ("socks",),
       (("cushioned sole", NOUN), ("moisture wicking", ADJ), ("arch support", NOUN), ("breathable mesh", NOUN),
        ("reinforced heel", NOUN), ("no show", ADJ)),
       (("color", ("white", "black", "grey")), ("size", ("6 pairs", "10 pairs", "12 pairs"))),
       (8, 30), mass=True, extras=("for Men",)),
    _t("baseball cap", "baseball cap", "fashion",
       (_FASHION, "Men", "Accessories", "Hats & Caps", "Baseball Caps"), ("baseball", "cap"),
       (("adjustable strap", NOUN), ("cotton twill", NOUN), ("uv protection", NOUN), ("curved brim", NOUN),
        ("washed denim", NOUN), ("unisex", ADJ)),
       (("color", ("black", "khaki", "navy", "red", "white")),), (8, 30)),
    _t("leather wallet", "wallet men", "fashion",
       (_FASHION, "Men", "Accessories", "Wallets, Card Cases & Money Organizers", "Wallets"), ("leather", "wallet"),
       (("genuine leather", NOUN), ("rfid blocking", ADJ), ("slim design", NOUN), ("gift box", NOUN),
        ("coin pocket", NOUN), ("id window", NOUN)),
       (("color", ("black", "brown", "tan", "navy")),), (12, 60)),
    # --- furniture ---------------------------------------------------------------------------------
    _t("office chair", "office chair", "furniture",
       (_HOME, "Furniture", "Home Office Furniture", "Home Office Chairs", "Home Office Desk Chairs"),
       ("office", "chair"),
       (("lumbar support", NOUN), ("height adjustable", ADJ), ("mesh back", NOUN), ("swivel wheels", NOUN),
        ("padded armrests", NOUN), ("high back", NOUN)),
       (("color", ("black", "grey", "white", "blue")),), (60, 250)),
    _t("bookshelf", "bookshelf", "furniture",
       (_HOME, "Furniture", "Home Office Furniture", "Bookcases"), ("bookshelf",),
       (("solid wood", NOUN), ("storage space", NOUN), ("anti tip kit", NOUN), ("open shelves", NOUN),
        ("industrial style", NOUN), ("metal frame", NOUN)),
       (("color", ("white", "black", "walnut", "espresso", "oak")), ("size", ("3 tier", "4 tier", "5 tier"))),
       (40, 200)),
    _t("coffee table", "coffee table", "furniture",
       (_HOME, "Furniture", "Living Room Furniture", "Tables", "Coffee Tables"), ("coffee", "table"),
       (("tempered glass", NOUN), ("storage shelf", NOUN), ("mid century", ADJ), ("solid wood", NOUN),
        ("lift top", NOUN), ("round shape", NOUN)),
       (("color", ("walnut", "black", "white", "oak")),), (60, 300)),
    _t("bar stool", "bar stools", "furniture",
       (_HOME, "Furniture", "Game & Recreation Room Furniture", "Home Bar Furniture", "Barstools"),
       ("bar", "stool"),
       (("height adjustable", ADJ), ("swivel seat", NOUN), ("faux leather", NOUN), ("footrest", NOUN),
        ("metal frame", NOUN), ("back support", NOUN)),
       (("color", ("black", "grey", "brown", "white")), ("size", ("set of 2", "set of 4"))), (50, 250)),
    _t("nightstand", "nightstand", "furniture",
       (_HOME, "Furniture", "Bedroom Furniture", "Nightstands"), ("nightstand",),
       (("solid wood", NOUN), ("charging station", NOUN), ("storage drawer", NOUN), ("bedroom", NOUN),
        ("soft close", ADJ), ("metal handles", NOUN)),
       (("color", ("white", "black", "walnut", "grey")), ("size", ("1 drawer", "2 drawer", "3 drawer"))),
       (40, 180)),
    _t("tv stand", "tv stand", "furniture",
       (_HOME, "Furniture", "Living Room Furniture", "TV & Media Furniture",
        "Television Stands & Entertainment Centers"), ("tv", "stand"),
       (("cable management", NOUN), ("storage cabinet", NOUN), ("led lights", NOUN), ("engineered wood", NOUN),
        ("farmhouse style", NOUN), ("glass doors", NOUN)),
       (("color", ("black", "white", "walnut", "oak")), ("size", ("55 inch", "65 inch", "75 inch"))),
       (80, 350)),
    _t("shoe rack", "shoe rack", "furniture",
       (_HOME, "Storage & Organization", "Clothing & Closet Storage", "Shoe Organizers",
        "Free Standing Shoe Racks"), ("shoe", "rack"),
       (("space saving", ADJ), ("metal frame", NOUN), ("stackable", ADJ), ("non woven fabric", NOUN),
        ("entryway", NOUN), ("bamboo", NOUN)),
       (("color", ("black", "white", "brown")), ("size", ("3 tier", "4 tier", "5 tier"))), (15, 80)),
    _t("dining chair", "dining chairs", "furniture",
       (_HOME, "Furniture", "Kitchen & Dining Room Furniture", "Chairs"), ("dining", "chair"),
       (("solid wood", NOUN), ("upholstered seat", NOUN), ("dining room", NOUN), ("mid century", ADJ),
        ("armless", ADJ), ("velvet fabric", NOUN)),
       (("color", ("grey", "beige", "green", "black")), ("size", ("set of 2", "set of 4"))), (60, 300)),
    # --- electronics -------------------------------------------------------------------------------
    _t("wireless earbuds", "wireless earbuds", "electronics",
       (_ELEC, "Headphones, Earbuds & Accessories", "Headphones & Earbuds", "Earbud Headphones"), ("earbuds",),
       (("noise cancelling", ADJ), ("long battery life", NOUN), ("water resistant", ADJ), ("wireless charging", NOUN),
        ("bluetooth 5.3", NOUN), ("touch control", NOUN)),
       (("color", ("black", "white", "navy", "pink")),), (20, 150), mass=True),
    _t("usb c cable", "usb c cable", "electronics",
       (_ELEC, "Computers & Accessories", "Computer Accessories & Peripherals", "Cables & Accessories", "Cables",
        "USB Cables"), ("usb", "cable"),
       (("fast charging", NOUN), ("high speed", NOUN), ("braided nylon", NOUN), ("data transfer", NOUN),
        ("aluminum connectors", NOUN), ("tangle free", ADJ)),
       (("color", ("black", "white", "grey", "red")), ("size", ("3 ft", "6 ft", "10 ft", "6 ft (pack of 3)"))),
       (6, 25)),
    _t("bluetooth speaker", "bluetooth speaker", "electronics",
       (_ELEC, "Portable Audio & Video", "Portable Speakers & Docks", "Portable Bluetooth Speakers"),
       ("speaker",),
       (("water resistant", ADJ), ("long battery life", NOUN), ("built in microphone", NOUN), ("deep bass", NOUN),
        ("stereo pairing", NOUN), ("shockproof", ADJ)),
       (("color", ("black", "blue", "red", "teal", "grey")),), (20, 150)),
    _t("phone case", "phone case", "electronics",
       (_PHONE, "Cases, Holsters & Sleeves", "Basic Cases"), ("phone", "case"),
       (("shock absorbent", ADJ), ("raised edges", NOUN), ("slim design", NOUN), ("magsafe compatible", ADJ),
        ("anti yellowing", ADJ), ("kickstand", NOUN)),
       (("color", ("black", "clear", "pink", "navy", "purple")),
        ("size", ("iphone 15", "iphone 15 pro", "galaxy s24"))), (8, 30)),
    _t("hdmi cable", "hdmi cable", "electronics",
       (_ELEC, "Television & Video", "Accessories", "Cables", "HDMI Cables"), ("hdmi", "cable"),
       (("high speed", NOUN), ("4k resolution", NOUN), ("braided nylon", NOUN), ("gold plated", ADJ),
        ("ethernet channel", NOUN), ("flexible", ADJ)),
       (("size", ("3 ft", "6 ft", "10 ft", "15 ft")),), (6, 30)),
    _t("power bank", "power bank", "electronics",
       (_PHONE, "Chargers & Power Adapters", "Portable Power Banks"), ("power", "bank"),
       (("fast charging", NOUN), ("usb c port", NOUN), ("led display", NOUN), ("compact", ADJ),
        ("airline approved", ADJ), ("dual output", NOUN)),
       (("color", ("black", "white", "blue")), ("size", ("10000mah", "20000mah", "26800mah"))), (15, 70)),
    _t("wireless mouse", "wireless mouse", "electronics",
       (_ELEC, "Computers & Accessories", "Computer Accessories & Peripherals", "Keyboards, Mice & Accessories",
        "Mice"), ("mouse",),
       (("ergonomic design", NOUN), ("silent click", NOUN), ("usb receiver", NOUN), ("long battery life", NOUN),
        ("adjustable dpi", NOUN), ("left handed", ADJ)),
       (("color", ("black", "grey", "white", "pink")),), (10, 50)),
    _t("fitness tracker", "fitness tracker", "electronics",
       (_ELEC, "Wearable Technology", "Activity & Fitness Trackers"), ("fitness", "tracker"),
       (("heart rate monitor", NOUN), ("sleep tracking", NOUN), ("water resistant", ADJ), ("long battery life", NOUN),
        ("gps", NOUN), ("step counter", NOUN)),
       (("color", ("black", "pink", "navy", "grey")),), (30, 150)),
)

# Words of the titles besides type names and brands: neutral (never an attribute, never a value).
DESCRIPTORS = ("Premium", "Classic", "Everyday", "Essential", "Deluxe", "Signature", "Modern", "Pro",
               "Ultra", "Original", "Select", "Prime", "Studio", "Urban", "Heritage")

# Nouns of our vocabulary beyond the type names: what spaCy would tag NOUN in a title ("men" of
# "Men's", "tree" of "Tea Tree", "support" of "Lumbar Support"). Used only by r_type's title score.
EXTRA_NOUNS = frozenset("""
women men hair tree scalp ingredients skin hour protection size acid finish formula bristles case handles
quality battery timer teeth sensor protein sugar bag bags flavors sodium nuts bottle harvest jar roast batch
origin msg sleeve neck fit jersey sole foam mesh support waist control stretch pockets print heel strap twill
brim denim leather box pocket window wheels armrests back wood space kit shelves style frame glass shelf top
shape seat footrest station drawer handles management cabinet lights doors fabric entryway bamboo room
dining velvet life charging microphone bass pairing edges kickstand resolution channel port display output
receiver click design monitor tracking counter gps speed transfer connectors warranty year assembly
pieces count pack set
""".split())

BRAND_SYLLABLES = (
    ("Vel", "Kes", "Bri", "Lum", "Nor", "Ar", "Sol", "Mar", "Ter", "Quin", "Zan", "Or", "Fal", "Hal", "Cor",
     "Dav", "Em", "Jun", "Lor", "Pel"),
    ("ora", "trel", "ven", "ina", "dell", "ix", "ara", "ton", "ova", "ley", "mont", "eth", "wyn", "ira", "ex"),
)

OPENERS = ("i need", "i want", "i am looking for", "i'm looking for", "find me", "i would like",
           "look for", "i want to buy", "i need to buy", "get me")

NEUTRAL_SENTENCES = (
    "Designed for everyday use and built to last.",
    "Backed by our customer satisfaction promise.",
    "Ships in recyclable packaging.",
    "A thoughtful choice for yourself or as a present.",
    "Made with care by a small team.",
    "Check the size chart before ordering.",
    "Store in a cool place away from direct sunlight.",
    "Compare with similar products and see the difference.",
)

REVIEW_LINES = (
    "Exactly as described, would buy again.",
    "Good value for the price.",
    "Arrived quickly and well packed.",
    "Not bad, but I expected a little more.",
    "My second order of this, still happy.",
    "Works fine so far.",
)
