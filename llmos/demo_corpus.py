"""The English that `llmos-demo` learns: customer-service chats, written here, deterministic.

A support desk for a bakery that also posts parcels: greetings, questions about
orders, parcels, refunds and accounts, polite answers and the shop's facts.
Each dialogue is a list of chat messages; `render_chat` writes one in the
demo model's chat format (the same text its Jinja `CHAT_TEMPLATE` renders),
and `render_plain` writes it as a bare transcript, so a prompt sent without the
template (`llmos submit "..."`) also continues as a conversation.

Pure Python and light to import: the tests and scripts/train_demo_model.py use it.
"""

from __future__ import annotations

import random
import re

EOS_TOKEN = "</s>"
ROLES = ("system", "user", "assistant")

# What `render_chat` writes, as the tokenizer's Jinja chat template. No BOS in it:
# the worker encodes the rendered prompt with the tokenizer, which prepends BOS.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

SYSTEM_PROMPTS = (
    "You are a helpful support assistant for Hilltop Bakery and Post.",
    "You are a friendly assistant at the Hilltop help desk. Answer politely and briefly.",
    "You help customers of Hilltop Bakery with orders, parcels, refunds and accounts.",
    "You are a kind and patient customer service agent.",
)
ITEMS = (
    "birthday cake",
    "loaf of bread",
    "box of cookies",
    "apple pie",
    "lemon tart",
    "bag of croissants",
    "chocolate cake",
    "fruit cake",
    "box of muffins",
    "cheesecake",
)
NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "James", "Kate", "Leo")
CITIES = ("London", "Leeds", "Bristol", "York", "Oxford", "Cardiff", "Glasgow", "Bath")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
FLAVOURS = ("chocolate", "vanilla", "lemon", "strawberry", "carrot", "coffee")
OPENERS = ("", "Hi, ", "Hello, ", "Good morning, ", "Good afternoon, ", "Hi there, ", "Excuse me, ")

# intent -> (user phrasings, assistant answers); {slots} are filled per dialogue.
INTENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "late": (
        (
            "my parcel is late.",
            "my parcel has not arrived yet.",
            "where is my parcel?",
            "I am still waiting for my order {order}.",
            "my {item} has not arrived.",
        ),
        (
            "I am sorry to hear that. Order {order} left our shop on {day} and should arrive within "
            "two working days. You can follow it with the tracking link in your email.",
            "I am sorry for the wait. I can see that order {order} is on its way to {city}. "
            "It should reach you by {day}. If it does not, please write to us again.",
            "Thank you for your patience. Your parcel {order} is with the courier and will be "
            "delivered on {day}. I will send you the tracking number by email.",
        ),
    ),
    "refund": (
        (
            "I would like a refund for my {item}.",
            "can I get my money back?",
            "how do refunds work?",
            "I want to return my {item}.",
            "my {item} was not fresh. Can I have a refund?",
        ),
        (
            "Of course. We give a full refund within thirty days of purchase. Please send us your "
            "order number and a photo of the item, and the money will be back on your card within "
            "five working days.",
            "I am sorry about that. I have started a refund for order {order}. The money will be "
            "back on your card within five working days.",
            "Yes, you can. Refunds are free within thirty days. Reply with your order number and "
            "I will arrange it for you today.",
        ),
    ),
    "password": (
        (
            "I forgot my password.",
            "I cannot sign in to my account.",
            "how do I reset my password?",
            "my password does not work.",
        ),
        (
            "No problem. Click Forgot password on the sign in page, enter your email address, and "
            "we will send you a link to choose a new password. The link works for one hour.",
            "I can help with that. Open the sign in page and choose Forgot password. We will email "
            "you a link, and you can set a new password in a minute.",
        ),
    ),
    "hours": (
        (
            "when are you open?",
            "what are your opening hours?",
            "are you open on Sunday?",
            "what time do you close today?",
        ),
        (
            "Our bakery is open from seven in the morning to six in the evening, Monday to Saturday. "
            "On Sunday we open at eight and close at two.",
            "We are open every day. From Monday to Saturday we open at seven and close at six, and "
            "on Sunday we are open from eight until two.",
        ),
    ),
    "order": (
        (
            "can I order a {item}?",
            "I would like to order a {flavour} cake for {name}.",
            "do you make {flavour} cakes?",
            "can you bake a {item} for Saturday?",
        ),
        (
            "Yes, you can! Cakes need two days of notice. Tell me the size, the flavour and the name "
            "to write on top, and I will place the order for you.",
            "Of course. A {flavour} cake for {name} will be ready on {day}. You can collect it from "
            "the shop or we can deliver it to you.",
            "We would love to bake it for you. Please order two days ahead, and we will have your "
            "{item} ready by {day}.",
        ),
    ),
    "delivery": (
        (
            "how much does delivery cost?",
            "do you deliver to {city}?",
            "is delivery free?",
            "how long does delivery take?",
        ),
        (
            "Delivery is free for orders over twenty pounds. Smaller orders cost three pounds to "
            "deliver, and most parcels arrive within two working days.",
            "Yes, we deliver to {city} and to most towns in the country. It usually takes two "
            "working days, and it is free for orders over twenty pounds.",
        ),
    ),
    "damaged": (
        ("my parcel arrived damaged.", "the box was broken when it arrived.", "my {item} arrived crushed."),
        (
            "I am very sorry about that. Please send us a photo of the parcel, and we will send you "
            "a new {item} at no cost or give you a full refund, as you prefer.",
            "That should not happen, and I am sorry. I have arranged a free replacement for order "
            "{order}. It will arrive on {day}.",
        ),
    ),
    "address": (
        (
            "can I change my delivery address?",
            "I moved to {city}. How do I change my address?",
            "I gave the wrong address for order {order}.",
        ),
        (
            "Yes. Open your account, choose Addresses, and add the new one. If your parcel has not "
            "left the shop yet, I can change the address for order {order} right now.",
            "Of course. I have changed the address for order {order} to your new home in {city}. "
            "You will get an email to confirm it.",
        ),
    ),
    "gluten": (
        (
            "do you have gluten free bread?",
            "do you sell vegan cakes?",
            "are your cookies safe for people with nut allergies?",
        ),
        (
            "Yes, we bake gluten free bread and vegan cakes every morning. All our products list "
            "their ingredients on the label, and our staff are happy to help you choose.",
            "We do. Our gluten free loaves and vegan cakes are baked in a separate kitchen. Please "
            "read the label for allergies, or ask us and we will check for you.",
        ),
    ),
    "account": (
        ("how do I change my email address?", "can I close my account?", "how do I update my card details?"),
        (
            "You can do that in your account settings. Sign in, open Settings, and choose the part "
            "you want to change. Your changes are saved at once.",
            "I can help with that. Sign in, go to Settings, and follow the steps there. If anything "
            "goes wrong, write to us and we will fix it for you.",
        ),
    ),
}
GREETINGS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (
        ("Hello!", "Hi!", "Hello there.", "Good morning!", "Hi, is anyone there?"),
        (
            "Hello! How can I help you today?",
            "Hi there! What can I do for you today?",
            "Good morning! How can I help you?",
        ),
    ),
    (
        ("Hello! How can I help you today?", "Hello, how are you today?", "Hi! How are you?"),
        (
            "Hello! I am well, thank you for asking. I am here to help with orders, parcels, refunds "
            "and accounts. What can I do for you today?",
            "Hi! I am fine, thank you. How can I help you with your order today?",
        ),
    ),
)
THANKS = (
    ("Thank you, that helps a lot.", "Thanks a lot!", "Great, thank you.", "That is perfect, thanks."),
    (
        "You are welcome! Is there anything else I can help you with?",
        "Happy to help! Is there anything else you need?",
    ),
)
GOODBYES = (
    ("No, that is all. Goodbye!", "No, thank you. Have a nice day.", "That is everything, bye!"),
    (
        "Have a lovely day. Goodbye!",
        "Thank you for writing to us. Goodbye!",
        "Take care, and enjoy your day!",
    ),
)

WORD = re.compile(r"[A-Za-z]+")


def _slots(rng: random.Random) -> dict[str, str]:
    return {
        "order": str(rng.randint(1000, 9999)),
        "item": rng.choice(ITEMS),
        "name": rng.choice(NAMES),
        "city": rng.choice(CITIES),
        "day": rng.choice(DAYS),
        "flavour": rng.choice(FLAVOURS),
    }


def _question(rng: random.Random, phrasing: str, slots: dict[str, str]) -> str:
    text = phrasing.format(**slots)
    opener = rng.choice(OPENERS)
    return opener + text if opener else text[0].upper() + text[1:]


def make_dialogue(rng: random.Random) -> list[dict[str, str]]:
    """One chat: maybe a system prompt, maybe a greeting, one to three questions, maybe thanks."""
    slots = _slots(rng)
    messages: list[dict[str, str]] = []
    if rng.random() < 0.7:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    turns: list[tuple[str, str]] = []
    if rng.random() < 0.5:
        users, answers = rng.choice(GREETINGS)
        turns.append((rng.choice(users), rng.choice(answers)))
    for intent in rng.sample(sorted(INTENTS), rng.randint(1, 3)):
        users, answers = INTENTS[intent]
        turns.append((_question(rng, rng.choice(users), slots), rng.choice(answers).format(**slots)))
    if rng.random() < 0.5:
        turns.append((rng.choice(THANKS[0]), rng.choice(THANKS[1])))
        if rng.random() < 0.6:
            turns.append((rng.choice(GOODBYES[0]), rng.choice(GOODBYES[1])))
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages


def dialogues(count: int, seed: int) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    return [make_dialogue(rng) for _ in range(count)]


def split(all_dialogues: list[list[dict[str, str]]]) -> tuple[list, list]:
    """(train, held out): every twentieth dialogue is held out."""
    train = [d for i, d in enumerate(all_dialogues) if i % 20 != 19]
    held_out = [d for i, d in enumerate(all_dialogues) if i % 20 == 19]
    return train, held_out


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The text `CHAT_TEMPLATE` renders for `messages` (the tokenizer adds BOS when it encodes)."""
    parts = []
    for message in messages:
        assert message["role"] in ROLES, message["role"]
        end = EOS_TOKEN if message["role"] == "assistant" else ""
        parts.append(f"<|{message['role']}|>\n{message['content']}{end}\n")
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)


def render_plain(messages: list[dict[str, str]]) -> str:
    """The chat as a bare transcript, starting at the assistant's greeting, one line a message."""
    lines = [m["content"] for m in messages if m["role"] != "system"]
    if any(lines[0] in users for users, _ in GREETINGS):
        lines = lines[2:]  # the transcript's own opening line greets
    return "Hello! How can I help you today?\n" + "\n".join(lines) + EOS_TOKEN


def words(text: str) -> set[str]:
    """Lower-cased whole words (letters only)."""
    return {word.lower() for word in WORD.findall(text)}
