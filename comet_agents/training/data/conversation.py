"""Synthetic long chats: the user states facts about themselves early, then much unrelated chit-chat follows.

Facts (name, city, pet's name, job, birthday, favourite food, hometown, partner, ...) are stated in user messages
in the first ~20% of the stream; sometimes the city or the job is updated later ("I just moved to Porto"), and
the question then asks for the current value. The chit-chat (user questions and assistant answers on cooking,
travel, programming, gardening, ...) never states anything about the user, but freely mentions other cities,
foods and names as distractors. Answers are the fact values themselves.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from comet_agents.events import ChatMessage, Event, render_many

from . import vocab
from .common import QA, Sample, TokenCounter, approx_tokens, check_target, grow_stream, make_rng

__all__ = ["FAMILY", "SLOTS", "generate", "iter_chitchat"]

FAMILY = "conversation"


def _t(block: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in block.replace("\n", " ").split("|") if x.strip())


def _a(noun: str) -> str:
    vowel = noun[0].lower() in "aeiou" and not noun.startswith(("UX", "uni", "Uni", "use", "one"))
    return ("an " if vowel else "a ") + noun


@dataclass(frozen=True)
class Slot:
    """A fact about the user: how to pick a value, how the user states it, how to ask about it.

    Templates use ``{v}`` (the value, which is the answer), ``{a_v}`` (value with a/an), ``{x}`` (a qualifier
    such as the pet type or the relation, chosen with the value).
    """

    name: str
    pick: Callable[[random.Random], tuple[str, str]]  # -> (value, qualifier)
    statements: tuple[str, ...]
    questions: tuple[str, ...]
    updates: tuple[str, ...] = ()
    update_questions: tuple[str, ...] = ()


def _plain(values: tuple[str, ...]) -> Callable[[random.Random], tuple[str, str]]:
    return lambda rng: (rng.choice(values), "")


def _birthday(rng: random.Random) -> tuple[str, str]:
    month = rng.randrange(12)
    day = rng.randint(1, (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[month])
    return f"{day} {vocab.MONTHS[month]}", ""


def _with(qualifiers: tuple[str, ...], values: tuple[str, ...]) -> Callable[[random.Random], tuple[str, str]]:
    return lambda rng: (rng.choice(values), rng.choice(qualifiers))


SLOTS: tuple[Slot, ...] = (
    Slot(
        "name",
        _plain(vocab.FIRST_NAMES),
        _t("Hi! I'm {v}, by the way.|My name is {v}.|You can call me {v}.|Oh, I should introduce myself - I'm {v}.|"
           "{v} here - nice to chat with you.|Hello, this is {v}."),
        _t("What is the user's name?|What's my name?|What did the user say their name was?|"
           "What should you call the user?"),
    ),
    Slot(
        "city",
        _plain(vocab.CITIES),
        _t("I live in {v}.|I'm based in {v}.|Greetings from {v}, where it's raining again.|"
           "I moved to {v} a couple of years ago and I love it.|Life in {v} is pretty hectic these days."),
        _t("Which city does the user live in?|Where do I live?|Where is the user based?"),
        _t("Big news: I just moved to {v}!|Update: I've relocated to {v} for work.|"
           "I finally did it - I now live in {v}."),
        _t("Where does the user live now?|Which city does the user live in now?|Where am I living these days?"),
    ),
    Slot(
        "pet",
        _with(vocab.PET_TYPES, vocab.PET_NAMES),
        _t("I have {a_x} called {v}.|My {x}, {v}, just knocked a plant over.|{v} - that's my {x} - is asleep next "
           "to me.|I should feed {v}, my {x}, soon."),
        _t("What is the name of the user's {x}?|What's my {x} called?|What did the user say their {x} is named?"),
    ),
    Slot(
        "job",
        _plain(vocab.JOBS),
        _t("I work as {a_v}.|I'm {a_v}, so my schedule is all over the place.|"
           "Work was busy today - being {a_v} is never boring.|By day I'm {a_v}."),
        _t("What does the user do for a living?|What is my job?|What is the user's profession?"),
        _t("I just started a new job as {a_v}!|Career change: I'm working as {a_v} now."),
        _t("What is the user's current job?|What does the user do for a living now?"),
    ),
    Slot(
        "birthday",
        _birthday,
        _t("My birthday is on {v}.|I was born on {v}.|My birthday's coming up - it's {v}.|"
           "Don't forget, {v} is my birthday!"),
        _t("When is the user's birthday?|When is my birthday?|On what day is the user's birthday?"),
    ),
    Slot(
        "food",
        _plain(vocab.FOODS),
        _t("My favourite food is {v}.|I could eat {v} every single day.|Nothing beats {v} - it's my favourite.|"
           "If I had to pick one dish forever, it'd be {v}."),
        _t("What is the user's favourite food?|What's my favourite dish?|Which food does the user love most?"),
    ),
    Slot(
        "colour",
        _plain(vocab.COLOURS),
        _t("My favourite colour is {v}.|I paint everything {v} - it's my favourite colour.|"
           "Anything in {v} makes me happy."),
        _t("What is the user's favourite colour?|Which colour does the user like best?"),
    ),
    Slot(
        "hobby",
        _plain(vocab.HOBBIES),
        _t("In my free time I love {v}.|My big hobby is {v}.|Weekends are for {v}, as far as I'm concerned."),
        _t("What hobby does the user enjoy?|What does the user do in their free time?|What is my hobby?"),
    ),
    Slot(
        "sibling",
        _with(("sister", "brother", "older sister", "younger brother", "twin"), vocab.FIRST_NAMES),
        _t("My {x} {v} is visiting next week.|I just talked to my {x}, {v}, on the phone.|"
           "{v}, my {x}, says hi."),
        _t("What is the name of the user's {x}?|What's my {x}'s name?"),
    ),
    Slot(
        "partner",
        _with(("wife", "husband", "partner", "girlfriend", "boyfriend"), vocab.FIRST_NAMES),
        _t("My {x} {v} and I are planning a trip.|{v}, my {x}, thinks I talk to you too much.|"
           "I'm cooking dinner for my {x}, {v}, tonight."),
        _t("What is the name of the user's {x}?|What is my {x} called?"),
    ),
    Slot(
        "car",
        _plain(vocab.CAR_MODELS),
        _t("I drive {v}.|My car is {v} and it's falling apart.|I finally bought a car: {v}."),
        _t("What car does the user drive?|What kind of car does the user have?"),
    ),
    Slot(
        "hometown",
        _plain(vocab.CITIES),
        _t("I grew up in {v}.|I'm originally from {v}.|My hometown is {v}."),
        _t("Where did the user grow up?|What is the user's hometown?|Where am I originally from?"),
    ),
    Slot(
        "university",
        _plain(vocab.UNIVERSITIES),
        _t("I studied at {v}.|I went to university at {v}.|Back when I was at {v}, I barely slept."),
        _t("Where did the user study?|Which university did the user go to?"),
    ),
    Slot(
        "drink",
        _plain(vocab.DRINKS),
        _t("I'm sipping my usual {v} right now.|I can't start the day without a {v}.|My go-to drink is {v}."),
        _t("What is the user's usual drink?|What drink can't the user start the day without?|What's my go-to drink?"),
    ),
    Slot(
        "allergy",
        _plain(vocab.ALLERGIES),
        _t("I'm allergic to {v}.|Just so you know, I have an allergy to {v}.|"
           "I have to be careful with {v} - I'm allergic."),
        _t("What is the user allergic to?|Which allergy does the user have?"),
    ),
    Slot(
        "instrument",
        _plain(vocab.INSTRUMENTS),
        _t("I've been learning the {v} for a year.|I play the {v} in a small band.|"
           "My neighbours hate my {v} practice."),
        _t("Which instrument does the user play?|What instrument am I learning?"),
    ),
    Slot(
        "language",
        _plain(vocab.LANGUAGES),
        _t("We speak {v} at home.|I'm a native {v} speaker.|My first language is {v}."),
        _t("Which language does the user speak at home?|What is the user's first language?"),
    ),
    Slot(
        "team",
        _plain(vocab.SPORTS_TEAMS),
        _t("I'm a huge fan of {v}.|I support {v}, for better or worse.|"
           "Did you see {v} play last night? That's my team."),
        _t("Which team does the user support?|What is the user's favourite team?"),
    ),
    Slot(
        "story",
        _plain(vocab.BOOKS_AND_FILMS),
        _t("My all-time favourite story is {v}.|I've reread or rewatched {v} more times than I can count.|"
           "Nothing tops {v} for me."),
        _t("What is the user's all-time favourite book or film?|Which story does the user love most?"),
    ),
)
_SLOT_BY_NAME = {s.name: s for s in SLOTS}

_ACKS = _t(
    "Good to know!|Thanks for sharing.|That sounds lovely.|Oh, how nice!|"
    "Noted - thanks for telling me.|Ha, I love that.|That's great to hear.|Interesting!|Sounds like fun."
)
_NAME_ACKS = _t("Nice to meet you, {v}!|Hi {v}! How can I help today?|Hello {v}, great to chat.")

# ----------------------------------------------------------------------------------------------- chit-chat

_VEG = _t("carrots|broccoli|cauliflower|sweet potatoes|aubergine|courgettes|leeks|mushrooms|spinach|butternut squash|"
          "peppers|beetroot|asparagus|kale|fennel")
_TOPIC_DATA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cooking": (
        _t("Any tips for roasting {veg}?|How long should I cook {food}?|What goes well with {veg}?|"
           "Can you suggest a quick dinner with {veg}?|Why does my {food} always turn out bland?"),
        _t("Roast the {veg} at a high temperature so the edges caramelise.|A squeeze of lemon at the end brightens "
           "everything.|Salt in stages rather than all at the end.|Don't overcrowd the pan, or it steams instead of "
           "browning.|Toasted seeds add a nice crunch.|A spoonful of miso adds depth to almost any sauce.|"
           "Fresh herbs go in at the very end.|Let it rest for a few minutes before serving.|"
           "{food} is forgiving, so feel free to experiment."),
    ),
    "travel": (
        _t("What should I see in {city}?|Is {month} a good time to visit {city}?|How many days do I need for {city}?|"
           "Any food I must try in {city}?|Is it easy to get around {city} by public transport?"),
        _t("{city} is lovely in {month}, though it can get busy.|Three or four days is enough for the highlights.|"
           "The old town is best explored on foot.|Try to book museums in advance.|Local markets are a great place "
           "for lunch.|Public transport there is cheap and reliable.|A day trip to the coast is worth it.|"
           "Many people say the view from the hills at sunset is the highlight."),
    ),
    "fitness": (
        _t("How do I start running without getting injured?|Is it better to stretch before or after a workout?|"
           "How many rest days should I take per week?|Any beginner-friendly strength exercises?"),
        _t("Start slowly and increase your distance by about ten percent a week.|Rest days matter as much as "
           "training days.|Squats, push-ups and rows cover most of the body.|Dynamic stretches work well before "
           "exercise.|Sleep is the most underrated recovery tool.|Consistency beats intensity in the long run.|"
           "Good shoes make a big difference."),
    ),
    "books": (
        _t("Can you recommend a book like {story}?|What should I read after {story}?|Is {story} worth revisiting?|"
           "Any short novels for a long train ride?"),
        _t("If you liked {story}, you might enjoy something with a similar atmosphere.|Short story collections are "
           "great for commutes.|Audiobooks are a good option for long journeys.|Many readers say the second half is "
           "where it really shines.|Try a classic you skipped in school.|A library card saves a lot of money."),
    ),
    "gardening": (
        _t("Why are my tomato leaves turning yellow?|When should I plant {veg}?|How often should I water herbs on a "
           "balcony?|What's the easiest vegetable to grow?"),
        _t("Yellow leaves often mean too much water.|Most herbs like to dry out a little between waterings.|"
           "{veg} are fairly easy for beginners.|Plant after the last frost in your area.|Compost improves almost "
           "any soil.|Mulch keeps the moisture in during hot weeks.|Pick a sunny spot; most vegetables need six "
           "hours of light."),
    ),
    "programming": (
        _t("What's the difference between a list and a tuple in Python?|How do I read a CSV file in {lang}?|"
           "Why is my loop so slow?|Should I learn Rust or Go first?|How do I undo my last git commit?"),
        _t("Tuples are immutable, lists are not.|Use the standard library's csv module first.|Profiling will tell "
           "you where the time goes.|Vectorised operations are much faster than Python loops.|"
           "Running git reset --soft HEAD~1 keeps your changes staged.|"
           "Both are good choices; pick the one your project "
           "needs.|Write a small test before you optimise.|Read the error message from the bottom up."),
    ),
    "money": (
        _t("How much should I keep in an emergency fund?|Is it worth paying off debt before investing?|"
           "Any tips for sticking to a budget?|How do I stop impulse buying?"),
        _t("Three to six months of expenses is a common rule of thumb.|High-interest debt usually comes first.|"
           "Automating savings removes the temptation.|Waiting 48 hours before a purchase helps a lot.|"
           "Track spending for a month before making a budget.|Small recurring subscriptions add up quickly."),
    ),
    "productivity": (
        _t("How do I stop procrastinating?|Is the Pomodoro technique actually useful?|How do I keep my inbox under "
           "control?|Any tips for working from home?"),
        _t("Break the task into something you can finish in ten minutes.|Pomodoro works well for focused work.|"
           "Check email at fixed times instead of constantly.|A separate workspace helps your brain switch modes.|"
           "Write tomorrow's top three tasks before you stop for the day.|Turn off non-essential notifications."),
    ),
    "music": (
        _t("Can you recommend some calm music for studying?|Who are some good jazz pianists to start with?|"
           "How do I get better at singing in tune?|What's a good first song to learn on the {instrument}?"),
        _t("Instrumental playlists are less distracting for studying.|Start with the classics and branch out.|"
           "Recording yourself is the fastest way to improve.|Simple songs with three chords are perfect for "
           "beginners.|Practise a little every day rather than a lot once a week.|A tuner app helps a lot early on."),
    ),
    "science": (
        _t("Why is the sky blue?|How far away is the Moon?|Why do cats purr?|How do vaccines work?|"
           "What causes the seasons?"),
        _t("Shorter wavelengths of light scatter more in the atmosphere.|The Moon is about 384,000 km away on "
           "average.|Nobody is completely sure why cats purr, but it seems to calm them.|Vaccines train the immune "
           "system to recognise a pathogen.|The seasons come from the tilt of the Earth's axis.|It's a great "
           "question that scientists still debate."),
    ),
    "weather": (
        _t("It's so grey outside today.|Do you think it will rain all week?|What's a good rainy-day activity?|"
           "Summer came early this year, didn't it?"),
        _t("A grey day is perfect for a good book.|Museums and cafes are great on rainy days.|Weather forecasts "
           "beyond a few days are uncertain.|A short walk still helps, even in drizzle.|Long warm spells are "
           "becoming more common in many places."),
    ),
    "language": (
        _t("What's the best way to learn {lang}?|How long does it take to become fluent in {lang}?|"
           "Are language apps enough on their own?|How can I practise speaking {lang}?"),
        _t("Daily practice matters more than long sessions.|Apps are a good start but speaking practice is key.|"
           "Watching series with subtitles helps with listening.|Language exchanges are free and fun.|"
           "Fluency usually takes a few years of steady effort.|Learn the most common thousand words first."),
    ),
    "home": (
        _t("How do I fix a squeaky door?|What's the best way to get rid of mould in the bathroom?|"
           "How do I hang a heavy mirror?|Any tips for decluttering?"),
        _t("A little oil on the hinges fixes most squeaks.|Ventilation is the long-term fix for mould.|"
           "Use wall anchors rated for the weight.|Start decluttering with one drawer, not a whole room.|"
           "Vinegar and baking soda clean a surprising amount.|Measure twice before you drill."),
    ),
    "films": (
        _t("Is {story} worth watching?|What's a good film for a cosy evening?|Any documentaries you'd recommend?|"
           "Can you suggest something funny to watch?"),
        _t("Many people call {story} a classic.|Nature documentaries are always a safe choice.|A comedy from the "
           "nineties rarely disappoints.|Animated films are great for a relaxed night.|Film festivals often stream "
           "hidden gems online."),
    ),
}
_USER_OPENERS = _t("Random question:|Hey,|Okay, different topic.|Quick one:|Hmm,|By the way,|Also,|So,|Question:|")
_ASSISTANT_OPENERS = _t("Great question!|Sure.|Good question.|Happy to help.|Of course.|Here are a few thoughts.|"
                        "Let me think.|Absolutely.|")


def _fill(rng: random.Random, template: str) -> str:
    return template.format(
        veg=rng.choice(_VEG),
        food=rng.choice(vocab.FOODS),
        city=rng.choice(vocab.CITIES),
        month=rng.choice(vocab.MONTHS),
        story=rng.choice(vocab.BOOKS_AND_FILMS),
        lang=rng.choice(vocab.LANGUAGES),
        instrument=rng.choice(vocab.INSTRUMENTS),
    )


def _cap(text: str) -> str:
    return text[0].upper() + text[1:] if text else text


def _chitchat(rng: random.Random, max_sentences: int = 5) -> list[Event]:
    topic = rng.choice(sorted(_TOPIC_DATA))
    questions, answers = _TOPIC_DATA[topic]
    opener = rng.choice(_USER_OPENERS + ("",) * 6)
    question = _fill(rng, rng.choice(questions))
    if opener.endswith(","):
        question = question[0].lower() + question[1:]
    user = f"{opener} {question}".strip()
    n = rng.randint(1, max(1, min(max_sentences, len(answers))))
    sentences = [_fill(rng, s) for s in rng.sample(answers, n)]
    opener = rng.choice(_ASSISTANT_OPENERS + ("",) * 3)
    reply = " ".join([opener] + [_cap(s) for s in sentences]).strip()
    return [ChatMessage("user", user), ChatMessage("assistant", reply)]


def iter_chitchat(rng: random.Random, max_sentences: int = 5) -> Iterator[Event]:
    """An endless chit-chat (user question, assistant answer, ...) that states nothing about the user."""
    while True:
        yield from _chitchat(rng, max_sentences)


# ----------------------------------------------------------------------------------------------- generation


@dataclass
class _Fact:
    slot: Slot
    value: str
    qualifier: str
    update: bool = False
    emitted: bool = False


def _statement(rng: random.Random, fact: _Fact) -> list[Event]:
    templates = fact.slot.updates if fact.update else fact.slot.statements
    text = rng.choice(templates).format(v=fact.value, a_v=_a(fact.value) if fact.value else "",
                                        x=fact.qualifier, a_x=_a(fact.qualifier) if fact.qualifier else "")
    text = _cap(text)
    if rng.random() < 0.3:  # fold the fact into a chit-chat question
        question, reply = _chitchat(rng)
        assert isinstance(question, ChatMessage)
        return [ChatMessage("user", f"{text} {question.content}"), reply]
    acks = _NAME_ACKS if fact.slot.name == "name" and not fact.update else _ACKS
    return [ChatMessage("user", text), ChatMessage("assistant", rng.choice(acks).format(v=fact.value))]


def generate(seed: int, target_tokens: int, count_tokens: TokenCounter = approx_tokens) -> Sample:
    """A long chat of about ``target_tokens`` tokens with 3-6 questions about facts stated early."""
    check_target(target_tokens)
    rng = make_rng(seed, FAMILY)
    chat_rng = random.Random(rng.getrandbits(64))
    n_facts = rng.randint(5, 9) if target_tokens >= 1500 else rng.randint(3, 5)
    slots = rng.sample(SLOTS, n_facts)
    used: set[str] = set()
    facts: list[_Fact] = []
    for slot in slots:
        for _ in range(50):
            value, qualifier = slot.pick(rng)
            if value not in used:
                break
        used.add(value)
        facts.append(_Fact(slot, value, qualifier))
    updates: list[_Fact] = []
    for fact in facts:
        if fact.slot.updates and rng.random() < 0.35:
            for _ in range(50):
                value, _q = fact.slot.pick(rng)
                if value not in used:
                    break
            used.add(value)
            updates.append(_Fact(fact.slot, value, fact.qualifier, update=True))

    # Facts in the first ~20% of the stream, updates between 35% and 70%.
    schedule = sorted(
        [(rng.uniform(0.0, 0.2), i, f) for i, f in enumerate(facts)]
        + [(rng.uniform(0.35, 0.7), len(facts) + i, f) for i, f in enumerate(updates)],
        key=lambda x: (x[0], x[1]),
    )
    pending = [(at, f, _statement(rng, f)) for at, _, f in schedule]
    sizes = [count_tokens(render_many(ev)) for _, _, ev in pending]
    head: list[Event] = []
    if rng.random() < 0.4:
        head.append(ChatMessage("system", rng.choice(_t(
            "You are a friendly, helpful assistant.|You are a helpful assistant. Answer concisely.|"
            "You are a warm and curious conversational partner."))))
    body: list[Event] = []

    def next_piece(remaining: int) -> list[Event]:
        used_tokens = target_tokens - remaining
        left = sum(sizes[len(sizes) - len(pending):])
        if pending and (used_tokens >= pending[0][0] * target_tokens or remaining <= left + 30):
            _, fact, events = pending.pop(0)
            fact.emitted = True
            piece = events
        else:
            piece = _chitchat(chat_rng, 5 if remaining > 200 else 2)
        body.extend(piece)
        return piece

    stream = grow_stream(next_piece, target_tokens, count_tokens, head=head)

    # Questions about emitted facts; an emitted update replaces the original value.
    latest: dict[str, _Fact] = {}
    for _, _, fact in schedule:
        if fact.emitted:
            latest[fact.slot.name] = fact
    asked = rng.sample(sorted(latest), min(len(latest), rng.randint(3, 6)))
    qas: list[QA] = []
    kinds: list[str] = []
    for name in asked:
        fact = latest[name]
        forms = fact.slot.update_questions if fact.update else fact.slot.questions
        qas.append(QA(rng.choice(forms).format(x=fact.qualifier), fact.value))
        kinds.append(f"{name}{'_updated' if fact.update else ''}")
    meta = {
        "seed": seed,
        "target_tokens": target_tokens,
        "tokens": count_tokens(stream),
        "messages": len(head) + len(body),
        "facts": [{"slot": f.slot.name, "value": f.value, "qualifier": f.qualifier, "update": f.update}
                  for _, _, f in schedule if f.emitted],
        "qa_kinds": kinds,
    }
    return Sample(FAMILY, stream, qas, meta)

