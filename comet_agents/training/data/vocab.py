"""Word lists shared by the synthetic data generators (names, places, things, prose vocabulary).

Plain tuples, never sets: iteration order must not depend on ``PYTHONHASHSEED`` so that generation is
deterministic across processes.
"""

from __future__ import annotations


def _words(block: str) -> tuple[str, ...]:
    """Whitespace-separated single words."""
    return tuple(block.split())


def _items(block: str) -> tuple[str, ...]:
    """``|``-separated entries (entries may contain spaces); blank entries dropped."""
    return tuple(x.strip() for x in block.replace("\n", "|").split("|") if x.strip())


FIRST_NAMES = _words(
    """
    Aaliyah Aarav Abigail Adrian Ahmed Aiko Alba Alejandro Alice Amara Amelia Anders Andrea Aneesh Anika Antoine
    Anya Arjun Astrid Aurora Ayesha Beatriz Benjamin Bianca Bjorn Camila Carlos Carmen Caroline Chen Chidi Chloe
    Clara Daniel Daria Dmitri Elena Elif Elijah Emeka Emil Emma Esther Ethan Fatima Felix Fiona Francesca Freya
    Gabriel Giulia Grace Hana Hannah Hassan Helena Hugo Ibrahim Ines Ingrid Isaac Isabel Ivan Jakob James Jana
    Javier Jin Joanna Jonas Jorge Julia Kai Kamala Karim Katarina Kenji Kofi Lara Layla Leila Leon Liam Lina Lucas
    Lucia Luis Maya Mateo Mei Mia Milan Mira Mohammed Nadia Naomi Nikhil Nina Noah Nora Oliver Olivia Omar Oscar
    Paloma Pedro Priya Rafael Rania Ravi Rosa Ruben Sakura Samir Sara Sebastian Sienna Simone Sofia Soren Stella
    Tariq Thea Tomas Valentina Victor Wei Yara Yusuf Zara Zoe Malik Ines Tobias Lorenzo Greta Matilda Elias Rosalind
    Desmond Imogen Rupert Harriet Winston Beatrix Cormac Saoirse Niamh Declan Ottilie Anouk Sven Hamza Zainab
    """
)

SURNAMES = _words(
    """
    Abbott Adeyemi Alvarez Andersen Bauer Becker Bianchi Brennan Castillo Chen Costa Dalton Dubois Eriksen Fernandes
    Fischer Fitzgerald Garcia Gonzalez Gupta Haddad Hansen Hartmann Herrera Ivanova Jensen Kaur Kim Kowalski Kumar
    Larsen Laurent Lindqvist Lopez Mahmoud Martin Mendes Moreau Murphy Nakamura Nguyen Novak Okafor Olsen Ortega
    Park Patel Petrov Quinn Ramirez Reyes Rossi Santos Schmidt Silva Singh Sorensen Suzuki Tanaka Taylor Torres
    Vargas Virtanen Wagner Walsh Weber Yamamoto Zhang Zimmermann Kovacs Horvath Lindgren Morales Achebe Mensah
    """
)

CITIES = _items(
    """
    Lisbon|Porto|Madrid|Valencia|Seville|Barcelona|Marseille|Lyon|Bordeaux|Nantes|Brussels|Antwerp|Ghent|Rotterdam|
    Utrecht|Amsterdam|Hamburg|Leipzig|Cologne|Munich|Berlin|Dresden|Vienna|Graz|Zurich|Basel|Geneva|Milan|Turin|
    Bologna|Naples|Palermo|Florence|Ljubljana|Zagreb|Budapest|Prague|Brno|Krakow|Warsaw|Gdansk|Vilnius|Riga|Tallinn|
    Helsinki|Stockholm|Gothenburg|Oslo|Bergen|Copenhagen|Aarhus|Dublin|Cork|Galway|Edinburgh|Glasgow|Manchester|
    Leeds|Bristol|Cardiff|Belfast|Reykjavik|Athens|Thessaloniki|Istanbul|Izmir|Tbilisi|Yerevan|Cairo|Casablanca|
    Tunis|Lagos|Accra|Nairobi|Kigali|Addis Ababa|Cape Town|Durban|Dubai|Doha|Muscat|Mumbai|Pune|Bangalore|Chennai|
    Kolkata|Jaipur|Colombo|Kathmandu|Dhaka|Bangkok|Chiang Mai|Hanoi|Da Nang|Kuala Lumpur|Penang|Singapore|Jakarta|
    Manila|Cebu|Taipei|Seoul|Busan|Osaka|Kyoto|Sapporo|Fukuoka|Shanghai|Chengdu|Hong Kong|Melbourne|Sydney|
    Brisbane|Perth|Auckland|Wellington|Vancouver|Calgary|Toronto|Montreal|Halifax|Seattle|Portland|Denver|Austin|
    Chicago|Boston|Philadelphia|Atlanta|Miami|New Orleans|Minneapolis|Mexico City|Guadalajara|Oaxaca|Bogota|
    Medellin|Lima|Cusco|Quito|Santiago|Valparaiso|Buenos Aires|Cordoba|Montevideo|Sao Paulo|Rio de Janeiro|Recife
    """
)

JOBS = _items(
    """
    nurse|software engineer|primary school teacher|architect|veterinarian|pharmacist|civil engineer|accountant|
    graphic designer|data analyst|electrician|plumber|chef|baker|barista|journalist|librarian|lawyer|paramedic|
    physiotherapist|dentist|pilot|flight attendant|firefighter|police officer|social worker|translator|
    photographer|carpenter|marine biologist|research chemist|museum curator|urban planner|sound engineer|
    video editor|UX researcher|product manager|nurse practitioner|high school maths teacher|dietitian|
    bus driver|landscape gardener|tailor|jeweller|optometrist|radiographer|midwife|speech therapist|
    economist|statistician|geologist|meteorologist|air traffic controller|real estate agent|bookkeeper|
    hotel receptionist|tour guide|yoga instructor|personal trainer|violin teacher|florist|bike mechanic|
    web developer|game designer|copywriter|court interpreter|archivist|zookeeper|beekeeper|winemaker
    """
)

PET_TYPES = _items("dog|cat|rabbit|parrot|hamster|tortoise|guinea pig|ferret|goldfish|budgie|lizard|horse")

PET_NAMES = _words(
    """
    Biscuit Pepper Mochi Luna Milo Ziggy Noodle Pickles Waffles Nala Oreo Bean Juniper Clementine Pumpkin Maple
    Sprout Toffee Dumpling Pixel Marble Basil Olive Rocket Hazel Bramble Nugget Sushi Tofu Kiwi Fig Walnut Chester
    Barnaby Gizmo Indigo Kismet Lentil Mango Nimbus Otis Pippin Quince Rufus Saffron Tinkerbell Umber Velvet Wasabi
    Yoshi Zephyr Socks Muffin Cocoa Paprika Churro Bagel Cosmo Domino Echo Frodo Goose Honey Jasper Koko
    """
)

FOODS = _items(
    """
    pad thai|lasagne|sushi|mushroom risotto|falafel wraps|ramen|chicken tikka masala|paella|pierogi|tacos al pastor|
    pho|shakshuka|moussaka|bibimbap|butter chicken|fish and chips|margherita pizza|goulash|dumplings|pasta carbonara|
    laksa|jollof rice|ceviche|gnocchi|spanakopita|dal makhani|katsu curry|banh mi|empanadas|fondue|tagine|
    pupusas|bao buns|arancini|khachapuri|poke bowls|enchiladas|okonomiyaki|feijoada|croque monsieur|biryani|
    mac and cheese|lentil soup|beef stew|vegetable tempura|apple pie|tiramisu|cheesecake|chocolate brownies
    """
)

COLOURS = _words(
    """
    red blue green yellow orange purple teal navy turquoise magenta maroon olive coral lavender mustard crimson
    emerald beige charcoal ivory burgundy scarlet indigo sage mint peach gold silver black white grey
    """
)

HOBBIES = _items(
    """
    rock climbing|sourdough baking|birdwatching|chess|watercolour painting|trail running|pottery|knitting|
    salsa dancing|woodworking|astronomy|photography|gardening|surfing|bouldering|calligraphy|origami|fencing|
    archery|scuba diving|playing the cello|kayaking|geocaching|cross-stitch|board games|stand-up comedy|
    beekeeping|fly fishing|skateboarding|model trains|crossword puzzles|film photography|candle making|
    playing the ukulele|open-water swimming|cycling|sailing|tennis|volleyball|bonsai|home brewing|embroidery
    """
)

INSTRUMENTS = _items(
    "piano|guitar|violin|cello|drums|saxophone|trumpet|flute|ukulele|bass guitar|clarinet|harp|accordion|banjo|oboe"
)

SPORTS_TEAMS = _items(
    """
    Benfica|Porto FC|Ajax|Celtic|Napoli|Boca Juniors|the Lakers|the Celtics|the Blue Jays|the Yankees|the Warriors|
    the All Blacks|Bayern|Dortmund|Liverpool|Arsenal|Real Betis|Lyon|the Chicago Cubs|the Seahawks|Galatasaray
    """
)

DRINKS = _items(
    """
    flat white|oat latte|green tea|chai|espresso|cold brew|hot chocolate|mint tea|matcha|kombucha|lemonade|
    sparkling water|rooibos|earl grey|iced coffee|ginger beer|mango lassi|yerba mate|cortado|cappuccino
    """
)

ALLERGIES = _items(
    "peanuts|shellfish|cats|pollen|penicillin|gluten|dairy|eggs|tree nuts|sesame|bee stings|dust mites|soy|latex"
)

LANGUAGES = _words(
    """
    Portuguese Spanish French German Italian Dutch Swedish Norwegian Danish Finnish Polish Czech Hungarian Greek
    Turkish Arabic Hindi Bengali Tamil Japanese Korean Mandarin Cantonese Vietnamese Thai Indonesian Swahili Yoruba
    Hebrew Russian Ukrainian Romanian Icelandic Welsh Irish Tagalog
    """
)

CAR_MODELS = _items(
    """
    an old Volvo estate|a red Fiat Panda|a Toyota Corolla|a second-hand Golf|a Nissan Leaf|a Mini Cooper|
    a Honda Civic|a Subaru Outback|a Tesla Model 3|a Skoda Octavia|a Renault Clio|a Ford Transit van|
    a Mazda MX-5|a Kia Niro|a Jeep Wrangler|a Citroen 2CV|a Peugeot 208|a Hyundai Ioniq
    """
)

UNIVERSITIES = _items(
    """
    the University of Lisbon|Trinity College Dublin|ETH Zurich|the University of Edinburgh|Sciences Po|KU Leuven|
    the University of Toronto|Seoul National University|the University of Cape Town|McGill|the University of Bologna|
    TU Delft|the University of Melbourne|Uppsala University|the University of Chile|Kyoto University|UCLA|
    the University of Nairobi|Charles University|the University of Warsaw|IIT Bombay|the University of Auckland
    """
)

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

BOOKS_AND_FILMS = _items(
    """
    Spirited Away|The Grand Budapest Hotel|Pride and Prejudice|One Hundred Years of Solitude|Dune|Amelie|
    The Left Hand of Darkness|Paddington 2|Moby-Dick|Parasite|The Name of the Wind|Cinema Paradiso|Middlemarch|
    Arrival|The Remains of the Day|Howl's Moving Castle|Station Eleven|Before Sunrise|Beloved|In the Mood for Love|
    The Hobbit|Jurassic Park|Rebecca|Casablanca|Frankenstein|The Secret Garden|Blade Runner|Little Women
    """
)

# ----------------------------------------------------------------------------------------------- prose filler

NOUNS = _words(
    """
    river garden window mountain village teacher lantern harbour meadow forest bridge market kitchen letter
    journey painter island library orchard station valley blanket candle castle compass desert engine factory
    feather festival fountain glacier hammer horizon kettle ladder lighthouse meadowlark mirror notebook ocean
    palace pebble piano pocket puzzle quilt rainbow ribbon saddle sailor scarf shadow shelter signal soldier
    spider staircase statue stove suitcase telescope thunder ticket tower tractor traveller tunnel umbrella violin
    wagon wheel whistle windmill wolf workshop basket beacon bicycle blossom bottle cabin canyon carpet cathedral
    chimney cloud comet cottage crown curtain diary dolphin dragon drum envelope falcon ferry fiddle fisherman
    flag garage giant goat gondola hedge helmet hill honey jacket jungle key kite lake lemon marble meadow
    merchant miller moon museum needle nest orchestra owl paddle parcel parrot pasture pilgrim pine planet pond
    quarry raft reef rooftop sandcastle scholar seagull shepherd shore skylark snowflake squirrel storm stream
    sunflower tailor tide timber tortoise trumpet valley vineyard volcano wanderer waterfall weaver willow
    """
)

ADJECTIVES = _words(
    """
    quiet ancient bright careful clever curious distant dusty eager faded fierce gentle golden hidden hollow
    humble icy lazy lively lonely lucky misty narrow noisy patient peaceful polished proud rapid restless rusty
    sandy shallow silent silver sleepy slow small smooth soft sparkling steady still stormy strange sunny swift
    tall tiny tired velvet warm weary wild windy wise wooden young amber bitter bold brave calm crooked crimson
    crowded damp delicate dim elegant empty endless famous fragile frozen gloomy graceful green grumpy heavy
    hungry jolly kind little loud massive mellow modest muddy nimble odd old pale plain rough round salty
    scarlet secret sharp shiny shy simple solemn sturdy thin thoughtful vast vivid weathered
    """
)

VERBS_PAST = _words(
    """
    wandered drifted waited watched carried followed painted gathered whispered climbed crossed noticed
    remembered opened closed counted borrowed repaired discovered measured polished wrapped folded delivered
    collected guarded shared traded visited sketched hummed hurried lingered rested searched sorted stacked
    studied tended tied tossed traced travelled trimmed tugged waved weighed welcomed wondered wrote built
    cleaned cooked danced dreamed explored fixed guided hid hunted invented joined juggled knitted laughed
    listened marched mended mixed nodded packed paddled planted played pointed poured pulled pushed raced
    read rowed sailed sang sewed shouted skated slept smiled sprinkled stirred strolled swept swam tasted
    """
)

ADVERBS = _words(
    """
    slowly quietly carefully happily suddenly gently eagerly patiently silently briskly calmly cheerfully
    clumsily curiously gracefully hastily lazily loudly merrily neatly politely proudly quickly rarely
    shyly softly steadily swiftly warmly wearily boldly kindly nervously playfully sleepily sternly
    """
)

PLACES = _items(
    """
    by the river|near the old mill|behind the bakery|across the valley|under the bridge|along the coast|
    at the edge of the forest|inside the lighthouse|on the hill|beside the harbour|in the busy market|
    past the church|below the cliffs|around the lake|at the train station|in the attic|on the rooftop|
    next to the fountain|through the orchard|over the meadow|in the village square|outside the library|
    down the narrow lane|on the far shore|beneath the willow|at the crossroads|in the quiet courtyard
    """
)

TIME_PHRASES = _items(
    """
    Every morning|Later that day|In the evening|Long ago|Before dawn|At noon|On Sundays|Each autumn|
    Once a year|After the storm|During the festival|In winter|At midnight|Years later|Just before sunset|
    On rainy afternoons|When the tide came in|After supper|In early spring|On the first day of summer
    """
)

# ----------------------------------------------------------------------------------------------- logs

SERVICES = _words(
    """
    api-gateway auth-service billing cart-service catalog checkout email-worker inventory notifier orders
    payments recommender search-indexer session-store shipping user-profile analytics-etl scheduler
    image-resizer ledger fraud-check pricing webhooks feature-flags rate-limiter reporting export-worker
    """
)

HTTP_PATHS = _items(
    """
    /api/v1/users|/api/v1/orders|/api/v1/cart|/api/v2/search|/api/v1/products|/api/v1/login|/api/v1/logout|
    /healthz|/metrics|/api/v1/payments|/api/v1/invoices|/api/v2/recommendations|/api/v1/shipments|
    /api/v1/sessions|/api/v1/reviews|/static/app.js|/static/styles.css|/api/v1/webhooks/stripe|/api/v1/export
    """
)

LOG_MESSAGES = _items(
    """
    cache miss for key {word}:{n}|connection pool size={n} idle={m}|retrying request attempt={m}|
    job {word}-{n} finished in {ms}ms|scheduled {m} tasks for worker-{m}|slow query detected duration={ms}ms|
    user {n} authenticated via oauth|token refreshed for session {hex}|queue depth={n} consumers={m}|
    flushed {n} records to storage|config reloaded from /etc/{word}/config.yaml|rate limit exceeded for client {hex}|
    payment {hex} captured amount={n}.{m}|circuit breaker closed for upstream {word}|gc pause {ms}ms heap={n}MB|
    received webhook event {word}.updated|invalidated {m} cache entries|opened database transaction {hex}|
    committed transaction {hex} rows={m}|disk usage at {m}% on /var/lib/{word}|tls handshake completed in {ms}ms|
    compacted segment {n} in {ms}ms|leader election won by node-{m}|heartbeat from node-{m} lag={ms}ms|
    worker-{m} picked up batch {n}|deprecated header X-{word} used by client {hex}|snapshot {n} written
    """
)
