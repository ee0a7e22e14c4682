"""The conversation engine: persona + memory + prompt + generation. Transports (CLI, Discord) call this;
it calls a backend through one protocol. No discord, torch or CLI code here."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from charbot import scene_turns
from charbot.backends.base import Backend, PromptFormat, cache_key
from charbot.generation import GenerationSettings, clean_reply, is_usable, trim_to_sentence
from charbot.lorebook import Lorebook
from charbot.memory import MemoryStoreError, MemoryUnavailable, Store, Turn, write_exchange
from charbot.persona import CharacterCard
from charbot.prompt import BuiltPrompt, PromptBuilder, card_prompt
from charbot.scheduler import Scheduler

log = logging.getLogger(__name__)

UNUSABLE_RETRIES = 2
HISTORY_FETCH = 400  # turns read from memory before the token budget trims them
MEMORY_RETRY_SECONDS = 30.0  # how long a delivered reply's write is retried while the database is unreachable

OnUpdate = Callable[[str], Awaitable[None] | None]
Deliver = Callable[["Reply"], Awaitable[None]]


@dataclass(frozen=True)
class Reply:
    text: str
    persona: str
    completion_tokens: int
    seconds: float
    turns_in_prompt: int
    fallback: bool = False
    prompt_tokens: int = 0
    lore: tuple[str, ...] = ()  # the lorebook entries placed in the prompt: "label (why)"


class Engine:
    def __init__(
        self,
        backend: Backend,
        store: Store,
        persona: CharacterCard,
        settings: GenerationSettings | None = None,
        *,
        prompt_format: PromptFormat | str = "auto",
        user_name: str = "User",
        fallback_reply: str = "...",
        personas: Mapping[str, CharacterCard] | None = None,
        scheduler: Scheduler | None = None,
        memory_retry_seconds: float = MEMORY_RETRY_SECONDS,
        lorebooks: Sequence[tuple[str, Lorebook]] = (),
        character_backends: Mapping[str, Backend] | None = None,
    ):
        self.backend = backend
        # characters that name a model of their own (Discord --cast); every other character uses `backend`
        self.character_backends = dict(character_backends or {})
        self.store = store
        self.default_persona = persona
        self.personas: dict[str, CharacterCard] = {persona.name: persona, **(personas or {})}
        self.settings = settings or GenerationSettings()
        self.user_name = user_name
        self.fallback_reply = fallback_reply
        self._format = prompt_format
        self.lorebooks = list(lorebooks)  # (name, book): for every character, after the card's own book
        self.memory_status = "ok"  # or "error: …" while replies cannot be saved or memory cannot be read
        self.memory_retry_seconds = memory_retry_seconds
        # Every generation goes through the scheduler: as many at once as the backend can serve (with several
        # models, the one scheduler also keeps a conversation's turns in order across them).
        self.scheduler = scheduler or Scheduler(backend.parallel)

    def backend_for(self, card: CharacterCard) -> Backend:
        return self.character_backends.get(card.name, self.backend)

    @property
    def backends(self) -> list[Backend]:
        """Every backend, the default first, each once (characters may share a model)."""
        return list({id(b): b for b in (self.backend, *self.character_backends.values())}.values())

    @property
    def prompt_format(self) -> PromptFormat:
        return self.format_for(self.backend)

    def format_for(self, backend: Backend) -> PromptFormat:
        return backend.default_prompt_format if self._format == "auto" else self._format  # type: ignore[return-value]

    # --- personas ------------------------------------------------------------------------------------
    async def persona_for(self, conversation_id: str) -> CharacterCard:
        name = await self.chosen_persona(conversation_id)
        return self.personas.get(name, self.default_persona) if name else self.default_persona

    async def chosen_persona(self, conversation_id: str) -> str | None:
        """The name /persona chose for the conversation; None when none was."""
        return await self._memory_call(self.store.get_persona(conversation_id))

    async def set_persona(self, conversation_id: str, card_or_name: CharacterCard | str) -> CharacterCard:
        if isinstance(card_or_name, CharacterCard):
            self.personas[card_or_name.name] = card_or_name
            card = card_or_name
        else:
            matches = [c for n, c in self.personas.items() if n.casefold() == card_or_name.casefold()]
            if not matches:
                raise KeyError(card_or_name)
            card = matches[0]
        await self._memory_call(self.store.set_persona(conversation_id, card.name))
        return card

    async def reset(self, conversation_id: str) -> int:
        for backend in self.backends:
            backend.forget(conversation_id)  # and the model's saved states of it
        return await self._memory_call(self.store.reset(conversation_id))

    async def channel_cast(self, channel: str) -> list[str] | None:
        """The characters active in `channel` (Discord --cast, /cast), in order; None when never set."""
        return await self._memory_call(self.store.channel_cast(channel))

    async def set_channel_cast(self, channel: str, names: Sequence[str]) -> None:
        await self._memory_call(self.store.set_channel_cast(channel, names))

    async def _memory_call(self, call):
        """Await a store call; an unreachable database shows in `memory_status` (and reaches the caller)."""
        try:
            return await call
        except MemoryUnavailable as exc:
            self._memory_failed(exc)
            raise

    # --- prompts -------------------------------------------------------------------------------------
    async def build_prompt(
        self, conversation_id: str, text: str, speaker: str | None = None, persona: CharacterCard | None = None,
        history: Sequence[Turn] | None = None, max_new_tokens: int | None = None, history_start: int = 0,
    ) -> tuple[BuiltPrompt, CharacterCard]:
        """The prompt for `text`: after `history` when given, else after the conversation's remembered turns;
        room is left for `max_new_tokens` (default: the engine's setting)."""
        card = persona or await self.persona_for(conversation_id)
        backend = self.backend_for(card)
        builder = PromptBuilder(
            backend.count_tokens,
            context_window=backend.context_window,
            max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
            fmt=self.format_for(backend),
            eos_token=backend.eos_token,
        )
        start = history_start
        if history is None:
            history, start = await self._history(conversation_id)
        history = scene_turns.seen_by(card.name, history)
        # {{user}} is the configured user name, not this message's speaker: in a group chat several people
        # talk, each named in their own turn, and a persona text that is the same for every conversation
        # lets batched backends share its KV cache.
        built = card_prompt(builder, card, self.user_name, history, text, speaker, self.lorebooks, start)
        # tagged with its conversation and character, so a backend's prompt cache keeps a state per character of
        # a scene, and drops them when the conversation is reset
        key = cache_key(conversation_id, card.name) if conversation_id else None
        return replace(built, prompt=replace(built.prompt, cache_key=key)), card

    async def _history(self, conversation_id: str) -> tuple[list[Turn], int]:
        """The remembered turns the prompt is built from, and how many older ones come before them."""
        if not conversation_id:
            return [], 0
        history = await self._memory_call(self.store.history(conversation_id, HISTORY_FETCH))
        if len(history) < HISTORY_FETCH:
            return history, 0
        # older turns exist: where this window starts in the conversation
        return history, await self._memory_call(self.store.count_messages(conversation_id)) - len(history)

    def _stops(self, card: CharacterCard, speaker: str | None) -> tuple[str, ...]:
        # every loaded character too: in a scene the model must not go on to write the next character's line
        names = {self.user_name, card.name, *self.personas, *([speaker] if speaker else [])}
        return tuple(f"\n{n}:" for n in sorted(names))

    # --- replies -------------------------------------------------------------------------------------
    async def reply(
        self, conversation_id: str, text: str, *, speaker: str | None = None, on_update: OnUpdate | None = None,
        deliver: Deliver | None = None, deadline: float | None = None, settings: GenerationSettings | None = None,
        persona: CharacterCard | None = None,
    ) -> Reply:
        """Generate and clean a reply (as `persona`, else the conversation's character), hand it to `deliver` (which shows it to the user), then remember the
        exchange. A reply whose delivery raised is not remembered: the character never recalls a line nobody
        saw. Turns of one conversation are served in arrival order, delivery included.

        Raises BusyError (QueueFull, DeadlineExceeded) when the scheduler cannot serve it in time; `deadline`
        is a `time.monotonic()` instant (default: now + the scheduler's timeout). `settings` replaces the
        engine's sampling for this reply.
        """
        async with self.scheduler.slot(conversation_id, deadline=deadline) as held:
            reply = await self._reply(conversation_id, text, speaker, on_update, persona, sampling=settings)
            held.generated()  # the model is free for other conversations while this reply is sent
            if deliver is not None:
                await deliver(reply)
            if conversation_id:
                await self._remember(conversation_id, [Turn("user", text, speaker), Turn("assistant", reply.text, reply.persona)])
            return reply

    async def follow_up(
        self, conversation_id: str, persona: CharacterCard, *, deliver: Deliver | None = None, deadline: float | None = None,
        wanted: Callable[[], bool] | None = None,
    ) -> Reply | None:
        """A scene turn: `persona` answers the conversation's last line (see charbot.scene_turns.follow_up)."""
        return await scene_turns.follow_up(self, conversation_id, persona, deliver=deliver, deadline=deadline, wanted=wanted)

    async def ask(
        self, text: str, *, speaker: str | None = None, persona: CharacterCard | None = None, history: Sequence[Turn] = (),
        settings: GenerationSettings | None = None, on_update: OnUpdate | None = None, deadline: float | None = None,
    ) -> Reply:
        """A one-off reply: the caller gives whatever history there is (none by default) and nothing is
        remembered. `settings` replaces the engine's sampling for this reply."""
        async with self.scheduler.slot(None, deadline=deadline):
            return await self._reply("", text, speaker, on_update, persona or self.default_persona, history, settings)

    async def _reply(
        self, conversation_id: str, text: str, speaker: str | None, on_update: OnUpdate | None, persona: CharacterCard | None = None,
        history: Sequence[Turn] | None = None, sampling: GenerationSettings | None = None, history_start: int = 0,
    ) -> Reply:
        started = time.perf_counter()
        settings = sampling or self.settings
        built, card = await self.build_prompt(conversation_id, text, speaker, persona, history, settings.max_new_tokens, history_start)
        settings = settings.with_stop(*self._stops(card, speaker))
        backend = self.backend_for(card)
        users = tuple(n for n in (self.user_name, speaker) if n)
        tokens = 0
        reply = ""
        for attempt in range(1 + UNUSABLE_RETRIES):
            if on_update is not None and attempt == 0:
                raw = await self._stream(backend, built, settings, card.name, users, on_update)
                used = backend.count_tokens(raw)
                truncated = used >= settings.max_new_tokens
            else:
                attempt_settings = settings if attempt == 0 else settings.model_copy(update={"seed": None, "do_sample": True})
                completion = await backend.complete(built.prompt, attempt_settings)
                raw, used = completion.text, completion.completion_tokens
                truncated = completion.finish_reason == "length" or used >= settings.max_new_tokens
            tokens += used
            reply = clean_reply(raw, char=card.name, user_names=users, stops=settings.stop)
            if truncated:
                reply = trim_to_sentence(reply)
            if is_usable(reply, text):
                break
            log.info("unusable reply %r (attempt %d), retrying", raw[:80], attempt + 1)
        fallback = not is_usable(reply, text)
        if fallback:
            reply = self.fallback_reply
        lore = tuple(f"{use.entry.label} ({use.entry.why})" for use in built.lore if use.placed)
        return Reply(reply, card.name, tokens, time.perf_counter() - started, built.turns_kept, fallback, built.prompt_tokens, lore)

    async def _remember(self, conversation_id: str, turns: list[Turn]) -> None:
        """A failing memory write must not cost the user the reply: it is retried (see `write_exchange`), and
        logged and shown in `memory_status` meanwhile."""
        if await write_exchange(self.store, conversation_id, turns, self.memory_retry_seconds, self._memory_failed) \
                and self.memory_status != "ok":
            log.warning("memory writes work again")
            self.memory_status = "ok"

    def _memory_failed(self, exc: MemoryStoreError) -> None:
        self.memory_status = f"error: {exc}"

    async def _stream(self, backend: Backend, built: BuiltPrompt, settings, char: str, users, on_update: OnUpdate) -> str:
        raw = ""
        shown = ""
        async for piece in backend.stream(built.prompt, settings):
            raw += piece
            cleaned = clean_reply(raw, char=char, user_names=users, stops=settings.stop)
            if cleaned != shown and cleaned.startswith(shown):
                shown = cleaned
                result = on_update(shown)
                if inspect.isawaitable(result):
                    await result
        return raw

    async def warm_up(self) -> None:
        """Load the model and run one tiny generation so the first user does not pay for it."""
        await self.store.open()
        for backend in self.backends:
            if not backend.ready:
                await backend.load()
            card = next((c for c in (self.default_persona, *self.personas.values()) if self.backend_for(c) is backend), None)
            if card is None:  # a model no loaded character names: nothing to warm it with
                continue
            built, _ = await self.build_prompt("", "Hello", persona=card)
            await backend.complete(built.prompt, self.settings.model_copy(update={"max_new_tokens": 1}))

    async def aclose(self) -> None:
        """Release every model (the store is closed by whoever opened it)."""
        for backend in self.backends:
            await backend.aclose()
