"""A deterministic English sentence generator for the synthetic speech corpus.

Sentences are built from a few hundred common words placed in grammatical slots (subjects,
transitive / intransitive / motion / speech verbs, objects with determiners and adjectives,
prepositional and time phrases, adverbs) by a dozen sentence shapes: statements, compound and
subordinate clauses, reported speech, questions and negations with contractions, possessives,
existential and descriptive sentences, numbers. The text is LibriSpeech style: upper case, words
separated by single spaces, only ``A``-``Z``, apostrophe and space (no punctuation).

Everything is drawn from a :class:`random.Random` given by the caller, so a seed fixes the output.
"""
from __future__ import annotations

import random
import re

NAMES = ("MARY JOHN ANNE THOMAS ELIZABETH GEORGE MARGARET HENRY JAMES CATHERINE ROBERT ALICE WILLIAM "
         "EDWARD LUCY ARTHUR JANE CHARLES EMMA PETER RUTH FRANCIS HELEN RALPH DOROTHY").split()

# (singular, plural)
NOUNS = [tuple(p.split("/")) for p in (
    "man/men woman/women child/children boy/boys girl/girls king/kings queen/queens prince/princes "
    "soldier/soldiers doctor/doctors captain/captains friend/friends stranger/strangers mother/mothers "
    "father/fathers brother/brothers sister/sisters servant/servants farmer/farmers horse/horses "
    "dog/dogs bird/birds fox/foxes sheep/sheep wolf/wolves house/houses door/doors window/windows "
    "garden/gardens river/rivers road/roads bridge/bridges village/villages city/cities forest/forests "
    "hill/hills field/fields church/churches letter/letters book/books box/boxes key/keys ship/ships "
    "boat/boats table/tables chair/chairs fire/fires lamp/lamps cup/cups bottle/bottles coat/coats "
    "hat/hats ring/rings sword/swords picture/pictures stone/stones tree/trees flower/flowers "
    "apple/apples piece/pieces journey/journeys question/questions answer/answers story/stories "
    "voice/voices face/faces hand/hands eye/eyes heart/hearts room/rooms night/nights morning/mornings "
    "jewel/jewels basket/baskets wagon/wagons tower/towers valley/valleys island/islands"
).upper().split()]

MASS_NOUNS = "WATER BREAD GOLD SILVER SNOW SMOKE MUSIC NEWS MONEY WOOD".split()

ADJECTIVES = ("OLD YOUNG LITTLE GREAT DARK BRIGHT QUIET STRANGE HAPPY SAD TIRED ANGRY KIND BRAVE POOR RICH "
              "BEAUTIFUL WHITE BLACK RED GREEN BLUE GOLDEN COLD WARM EMPTY HEAVY SMALL LARGE LONG NARROW "
              "WIDE DEEP GENTLE PROUD FOOLISH WISE LAZY HONEST SILENT FAMOUS ANCIENT SUDDEN CURIOUS "
              "FRIENDLY LONELY WILD GRAY SOFT").split()

# (past, base)
VERBS_TRANSITIVE = [tuple(p.split("/")) for p in (
    "saw/see found/find took/take brought/bring knew/know loved/love opened/open closed/close "
    "carried/carry followed/follow watched/watch called/call met/meet held/hold lost/lose "
    "left/leave built/build bought/buy sold/sell wrote/write read/read remembered/remember "
    "answered/answer helped/help visited/visit touched/touch painted/paint pulled/pull pushed/push "
    "fixed/fix thanked/thank kissed/kiss washed/wash asked/ask jumped/jump quizzed/quiz seized/seize"
).upper().split()]

VERBS_INTRANSITIVE = [tuple(p.split("/")) for p in (
    "slept/sleep laughed/laugh waited/wait smiled/smile cried/cry listened/listen sang/sing "
    "danced/dance worked/work prayed/pray trembled/tremble sighed/sigh paused/pause stood/stand "
    "rested/rest nodded/nod shivered/shiver wondered/wonder"
).upper().split()]

VERBS_MOTION = [tuple(p.split("/")) for p in (
    "walked/walk ran/run went/go came/come hurried/hurry rode/ride climbed/climb wandered/wander "
    "returned/return crept/creep drove/drive sailed/sail marched/march rushed/rush"
).upper().split()]

VERBS_SPEECH = "SAID WHISPERED ANSWERED CRIED EXPLAINED THOUGHT KNEW FEARED BELIEVED REPLIED".split()

ADVERBS = ("SLOWLY QUICKLY QUIETLY SUDDENLY GENTLY SOFTLY CAREFULLY HAPPILY SADLY EAGERLY LOUDLY "
           "PATIENTLY BRAVELY OFTEN NEVER ALWAYS SOMETIMES AGAIN ALMOST ZEALOUSLY").split()

PREPOSITIONS_PLACE = "INTO THROUGH ACROSS UNDER OVER BEHIND BESIDE NEAR TOWARD AROUND ALONG BEYOND".split()
PREPOSITIONS_POSITION = "IN ON UNDER BEHIND BESIDE NEAR BY".split()

TIMES = ["AT NIGHT", "IN THE MORNING", "YESTERDAY", "AT LAST", "ONCE MORE", "THAT EVENING",
         "BEFORE DAWN", "AFTER DINNER", "ALL DAY", "LAST WINTER", "NEXT SUMMER", "LONG AGO",
         "THE NEXT DAY", "IN THE SPRING", "EVERY SUNDAY", "JUST THEN"]

NUMBERS = "TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN TWELVE TWENTY SIXTEEN FIFTY".split() + ["A HUNDRED"]

SUBJECT_PRONOUNS = ["HE", "SHE", "THEY", "WE", "I", "YOU"]
OBJECT_PRONOUNS = {"HE": "HIM", "SHE": "HER", "THEY": "THEM", "WE": "US", "I": "ME", "YOU": "YOU"}
BE_PAST = {"HE": "WAS", "SHE": "WAS", "I": "WAS", "THEY": "WERE", "WE": "WERE", "YOU": "WERE"}
SING_DETERMINERS = ["THE", "THE", "THE", "A", "THIS", "THAT", "HIS", "HER", "THEIR", "MY", "OUR", "EVERY",
                    "NO", "ONE"]
PLURAL_DETERMINERS = ["THE", "THE", "THESE", "THOSE", "SOME", "MANY", "SEVERAL", "HIS", "HER", "THEIR",
                      "MY", "OUR", "NO"]
CONJUNCTIONS = ["AND", "BUT", "SO", "YET", "FOR", "WHILE", "BECAUSE"]
SUBORDINATORS = ["WHEN", "BEFORE", "AFTER", "ALTHOUGH", "IF", "AS SOON AS", "WHILE", "SINCE"]
INTERJECTIONS = ["OH", "WELL", "INDEED", "YES", "NO", "ALAS"]
CONTRACTED_STARTS = ["I'M SURE THAT", "IT'S TRUE THAT", "THAT'S WHY", "I DON'T THINK THAT",
                     "WE'LL SEE IF", "YOU'VE HEARD THAT", "THEY'D SAY THAT", "HE'S CERTAIN THAT"]
NEGATIONS = ["DIDN'T", "COULDN'T", "WOULDN'T", "SHOULDN'T", "WON'T", "CAN'T", "DON'T", "MUSTN'T"]
MODALS = ["COULD", "WOULD", "SHOULD", "MIGHT", "MUST", "WILL", "CAN"]

_VALID = re.compile(r"^[A-Z']+( [A-Z']+)*$")


def _article(word: str) -> str:
    return "AN" if word[0] in "AEIOU" else "A"


class SentenceGenerator:
    """``SentenceGenerator(rng).sentence()`` -> one upper-case sentence."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    # --- phrases -------------------------------------------------------------------------
    def _pick(self, seq):
        return self.rng.choice(seq)

    def noun_phrase(self, plural: bool | None = None, allow_name: bool = True) -> str:
        r = self.rng.random()
        if allow_name and r < 0.15:
            name = self._pick(NAMES)
            if self.rng.random() < 0.3:  # possessive: MARY'S GARDEN
                return f"{name}'S {self._pick(NOUNS)[0]}"
            return name
        if r < 0.2:
            return f"SOME {self._pick(MASS_NOUNS)}" if self.rng.random() < 0.5 else self._pick(MASS_NOUNS)
        if plural is None:
            plural = self.rng.random() < 0.3
        noun = self._pick(NOUNS)[1 if plural else 0]
        words = []
        n_adj = self.rng.choices([0, 1, 2], weights=[5, 4, 1])[0]
        adjs = self.rng.sample(ADJECTIVES, n_adj)
        if plural and self.rng.random() < 0.25:
            det = self._pick(NUMBERS)
        else:
            det = self._pick(PLURAL_DETERMINERS if plural else SING_DETERMINERS)
        if det == "A":
            det = _article((adjs + [noun])[0])
        words.append(det)
        if len(adjs) == 2 and self.rng.random() < 0.3:
            words += [adjs[0], "AND", adjs[1]]
        else:
            words += adjs
        words.append(noun)
        return " ".join(words)

    def subject(self) -> tuple:
        """``(text, pronoun-or-None)``."""
        if self.rng.random() < 0.35:
            p = self._pick(SUBJECT_PRONOUNS)
            return p, p
        return self.noun_phrase(), None

    def obj(self) -> str:
        if self.rng.random() < 0.15:
            return self._pick(list(OBJECT_PRONOUNS.values()))
        return self.noun_phrase()

    def place(self) -> str:
        return f"{self._pick(PREPOSITIONS_PLACE)} {self.noun_phrase(allow_name=False)}"

    def tail(self) -> str:
        parts = []
        if self.rng.random() < 0.25:
            parts.append(f"{self._pick(PREPOSITIONS_POSITION)} {self.noun_phrase(allow_name=False)}")
        if self.rng.random() < 0.25:
            parts.append(self._pick(TIMES))
        return (" " + " ".join(parts)) if parts else ""

    # --- clauses -------------------------------------------------------------------------
    def clause(self) -> str:
        subj, pron = self.subject()
        shape = self.rng.choices(range(7), weights=[6, 3, 4, 2, 2, 2, 1])[0]
        if shape == 0:  # transitive
            adv = f" {self._pick(ADVERBS)}" if self.rng.random() < 0.2 else ""
            return f"{subj}{adv} {self._pick(VERBS_TRANSITIVE)[0]} {self.obj()}{self.tail()}"
        if shape == 1:  # intransitive
            adv = f" {self._pick(ADVERBS)}" if self.rng.random() < 0.5 else ""
            return f"{subj} {self._pick(VERBS_INTRANSITIVE)[0]}{adv}{self.tail()}"
        if shape == 2:  # motion
            adv = f" {self._pick(ADVERBS)}" if self.rng.random() < 0.3 else ""
            return f"{subj} {self._pick(VERBS_MOTION)[0]}{adv} {self.place()}"
        if shape == 3:  # description
            be = BE_PAST.get(pron, "WAS") if pron else ("WERE" if self._is_plural(subj) else "WAS")
            adj = self._pick(ADJECTIVES)
            extra = f" AND {self._pick(ADJECTIVES)}" if self.rng.random() < 0.4 else ""
            very = "VERY " if self.rng.random() < 0.3 else ""
            return f"{subj} {be} {very}{adj}{extra}"
        if shape == 4:  # negation
            return f"{subj} {self._pick(NEGATIONS)} {self._pick(VERBS_TRANSITIVE)[1]} {self.obj()}"
        if shape == 5:  # modal
            verb = self._pick(VERBS_MOTION + VERBS_INTRANSITIVE)[1]
            return f"{subj} {self._pick(MODALS)} {verb}{self.tail()}"
        return f"THERE WAS {self.noun_phrase(plural=False, allow_name=False)} {self.place()}"

    @staticmethod
    def _is_plural(np_text: str) -> bool:
        last = np_text.split()[-1]
        return any(last == pl and pl != sg for sg, pl in NOUNS)

    def sentence(self) -> str:
        """One sentence of a randomly chosen shape."""
        shape = self.rng.choices(range(9), weights=[8, 3, 2, 2, 2, 1, 1, 1, 1])[0]
        if shape == 0:
            text = self.clause()
        elif shape == 1:
            text = f"{self.clause()} {self._pick(CONJUNCTIONS)} {self.clause()}"
        elif shape == 2:
            text = f"{self._pick(SUBORDINATORS)} {self.clause()} {self.clause()}"
        elif shape == 3:
            subj, _ = self.subject()
            text = f"{subj} {self._pick(VERBS_SPEECH)} THAT {self.clause()}"
        elif shape == 4:
            text = f"{self._pick(CONTRACTED_STARTS)} {self.clause()}"
        elif shape == 5:  # question (no punctuation, as LibriSpeech)
            subj, _ = self.subject()
            verb = self._pick(VERBS_TRANSITIVE)[1]
            wh = self._pick(["DID", "WHY DID", "WHERE DID", "HOW DID", "WHEN DID"])
            text = f"{wh} {subj} {verb} {self.obj()}"
        elif shape == 6:
            text = f"{self._pick(INTERJECTIONS)} {self.clause()} {self._pick(VERBS_SPEECH[:5])} {self._pick(NAMES)}"
        elif shape == 7:
            name = self._pick(NAMES)
            text = f"{name} COUNTED {self._pick(NUMBERS)} {self._pick(NOUNS)[1]} {self._pick(TIMES)}"
        else:
            degree, adj = self._pick(["VERY", "QUITE", "TOO"]), self._pick(ADJECTIVES)
            text = f"IT'S {degree} {adj} {self._pick(VERBS_SPEECH[:5])} {self._pick(NAMES)}"
        text = " ".join(text.split())
        if not _VALID.match(text):  # pragma: no cover - guards the word lists
            raise AssertionError(f"invalid sentence {text!r}")
        return text

    def utterance(self, min_words: int = 5, max_words: int = 40) -> str:
        """One utterance: sentences are joined until it has ``min_words`` words, and one in five
        times one more is added (LibriSpeech segments often span sentences)."""
        text = self.sentence()
        while len(text.split()) < min_words:
            text = f"{text} {self.sentence()}"
        if self.rng.random() < 0.2:
            second = self.sentence()
            if len(text.split()) + len(second.split()) <= max_words:
                text = f"{text} {second}"
        return text


def vocabulary() -> set:
    """Every word the generator can produce (for tests and documentation)."""
    words = set(NAMES) | set(MASS_NOUNS) | set(ADJECTIVES) | set(VERBS_SPEECH) | set(ADVERBS)
    words |= {f"{n}'S" for n in NAMES}
    for pairs in (NOUNS, VERBS_TRANSITIVE, VERBS_INTRANSITIVE, VERBS_MOTION):
        for pair in pairs:
            words |= set(pair)
    for phrase_list in (PREPOSITIONS_PLACE, PREPOSITIONS_POSITION, TIMES, NUMBERS, SUBJECT_PRONOUNS,
                        list(OBJECT_PRONOUNS.values()), list(BE_PAST.values()), SING_DETERMINERS,
                        PLURAL_DETERMINERS, CONJUNCTIONS, SUBORDINATORS, INTERJECTIONS, CONTRACTED_STARTS,
                        NEGATIONS, MODALS):
        for phrase in phrase_list:
            words |= set(phrase.split())
    words |= {"AN", "A", "AND", "VERY", "THERE", "WAS", "THAT", "IT'S", "QUITE", "TOO", "COUNTED", "SOME",
              "DID", "WHY", "WHERE", "HOW", "WHEN"}
    return words
