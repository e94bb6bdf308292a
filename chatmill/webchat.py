"""The chat as a web page: `make chat-web [MODEL=models/part-03] [PERSONA=card.yaml] [PORT=7860]`.

A local Gradio page with the persona card, the conversation, sliders for the sampling settings
(temperature, top_p, top_k, repetition penalty, reply length), and Regenerate, Undo and Reset; a reply
appears as it is generated. The prompt, its stopping rules, the card and the starting settings are
the terminal chat's (chatmill.chat), so a reply here is sampled as `make chat` and sample-eval sample.

    python -m chatmill.webchat [--model DIR] [--persona CARD] [--host 127.0.0.1] [--port 7860]
"""

import html
from collections.abc import Iterator
from typing import Any

import gradio as gr
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatmill.chat import (
    DEFAULT_SETTING,
    Card,
    Chat,
    chat_arguments,
    drop_reply,
    load_chat_model,
    stream_reply,
    undo,
)
from chatmill.errors import exit_on_error
from chatmill.generation import GRID_KEYS, Setting, setting_problem
from chatmill.schema import USER_NAME, Turn

# Experiment 7's testers moved temperature within 0.5-1.0, top_p 0.9-1.0, top_k 0-40 and the repetition
# penalty 1.0-1.2 (the logbook); the sliders reach a little beyond. Per setting: minimum, maximum, step,
# and what a tester should know.
SLIDERS: dict[str, tuple[float, float, float, str]] = {
    "temperature": (0.3, 1.3, 0.05, "lower: safer, higher: more varied"),
    "top_p": (0.8, 1.0, 0.01, "1 = off"),
    "top_k": (0, 60, 1, "0 = off"),
    "repetition_penalty": (1.0, 1.3, 0.01, "1 = off"),
}
SamplingValues = tuple[float, float, float, float, float]  # the four sliders of GRID_KEYS, then the length


def literal(text: str) -> str:
    """Model or card text for the page: markdown still renders (*actions* in italics, as the community's
    UIs show them) but tags show as written: a model that writes "<START>" should be seen doing it."""
    return html.escape(text, quote=False)


def messages(card: Card, turns: list[Turn]) -> list[dict[str, str]]:
    """The conversation as the page shows it: the greeting, then every turn."""
    shown = [{"role": "assistant", "content": literal(card.greeting)}] if card.greeting else []
    for turn in turns:
        shown.append(
            {"role": "user" if turn["role"] == "user" else "assistant", "content": literal(turn["text"])}
        )
    return shown


def card_markdown(card: Card) -> str:
    lines = [f"### {literal(card.bot_name)}", f"**Persona:** {literal(card.persona)}"]
    if card.scenario:
        lines.append(f"**Scenario:** {literal(card.scenario)}")
    if card.examples:
        lines.append("**Example exchanges** (the model sees them before the greeting):")
        for user, bot in card.examples:
            lines.append(f"> {USER_NAME}: {literal(user)}  \n> {literal(card.bot_name)}: {literal(bot)}")
    return "\n\n".join(lines)


def bot_turn(card: Card, text: str) -> Turn:
    return Turn(role="bot", name=card.bot_name, text=text)


def build_app(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, card: Card, max_new_tokens: int
) -> gr.Blocks:
    """The page for one model and card. Each browser tab has its own conversation (a gr.State of
    turns); the sliders are read at every reply."""
    context = model.config.max_position_embeddings

    def chat_with(turns: list[Turn], sampling: SamplingValues) -> Chat:
        *values, length = sampling
        setting = Setting(
            **{
                key: int(value) if key == "top_k" else float(value)
                for key, value in zip(GRID_KEYS, values, strict=True)
            }
        )
        problem = setting_problem(setting)
        if problem:
            raise gr.Error(problem)
        return Chat(card, setting, int(length), turns)

    def respond(chat: Chat) -> Iterator[tuple[list[dict[str, str]], list[Turn]]]:
        """The conversation with the reply growing in it, then with the reply in its turns."""
        stream = stream_reply(model, tokenizer, chat)
        for text in stream:
            yield messages(card, [*chat.turns, bot_turn(card, text)]), chat.turns
        chat.turns.append(bot_turn(card, stream.reply.text))
        if stream.reply.stop == "max_tokens":
            gr.Info("The reply was cut off by max new tokens; raise it for longer replies.", duration=5)
        yield messages(card, chat.turns), chat.turns

    def send(text: str, turns: list[Turn], *sampling: Any) -> Iterator[tuple[Any, list[Turn], str]]:
        if not text.strip():
            yield messages(card, turns), turns, text
            return
        chat = chat_with([*turns, Turn(role="user", name=USER_NAME, text=text.strip())], sampling)
        for shown, current in respond(chat):
            yield shown, current, ""

    def regenerate(turns: list[Turn], *sampling: Any) -> Iterator[tuple[Any, list[Turn]]]:
        turns = list(turns)
        if not drop_reply(turns):
            gr.Warning("Nothing to regenerate yet: send a message first.")
            yield messages(card, turns), turns
            return
        yield from respond(chat_with(turns, sampling))

    def take_back(turns: list[Turn]) -> tuple[Any, list[Turn], str]:
        """Undo: the taken-back message goes back into the box, to edit and send again."""
        turns = list(turns)
        taken = [turn["text"] for turn in undo(turns) if turn["role"] == "user"]
        return messages(card, turns), turns, taken[0] if taken else ""

    with gr.Blocks(title=f"{card.bot_name} · chatmill chat", analytics_enabled=False) as app:
        turns = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    messages(card, []),
                    label=f"Chat with {card.bot_name}",
                    elem_id="conversation",
                    height=520,
                    feedback_options=None,
                    group_consecutive_messages=False,
                )
                with gr.Row():
                    message = gr.Textbox(
                        placeholder=f"Message {card.bot_name} (Enter sends)",
                        show_label=False,
                        elem_id="message",
                        scale=5,
                        autofocus=True,
                    )
                    send_button = gr.Button("Send", variant="primary", elem_id="send", scale=1)
                with gr.Row():
                    regenerate_button = gr.Button("Regenerate", elem_id="regenerate")
                    undo_button = gr.Button("Undo", elem_id="undo")
                    reset_button = gr.Button("Reset", elem_id="reset")
            with gr.Column(scale=2):
                with gr.Accordion("Persona card"):
                    gr.Markdown(card_markdown(card), elem_id="persona")
                with gr.Accordion("Sampling"):
                    sliders = [
                        gr.Slider(
                            low,
                            high,
                            value=getattr(DEFAULT_SETTING, key),
                            step=step,
                            label=key.replace("_", " "),
                            info=info,
                            elem_id=key,
                        )
                        for key in GRID_KEYS
                        for low, high, step, info in [SLIDERS[key]]
                    ]
                    sliders.append(
                        gr.Slider(
                            1,
                            context // 2,
                            value=max_new_tokens,
                            step=1,
                            label="max new tokens",
                            info="a reply longer than this is cut off",
                            elem_id="max_new_tokens",
                        )
                    )
        # One reply at a time, whichever tab or button asks: the model is shared, and a CPU has no room
        # for two.
        for trigger in (message.submit, send_button.click):
            trigger(send, [message, turns, *sliders], [chatbot, turns, message], concurrency_id="model")
        regenerate_button.click(regenerate, [turns, *sliders], [chatbot, turns], concurrency_id="model")
        undo_button.click(take_back, [turns], [chatbot, turns, message])
        # The conversation's own clear button (its bin icon) starts over as Reset does.
        for trigger in (reset_button.click, chatbot.clear):
            trigger(lambda: (messages(card, []), [], ""), None, [chatbot, turns, message])
    return app


@exit_on_error
def main() -> None:
    parser = chat_arguments(__doc__)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (0.0.0.0: the whole network)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    args = parser.parse_args()
    model, tokenizer, card = load_chat_model(args.model, args.persona)
    length = min(args.max_new_tokens, model.config.max_position_embeddings // 2)
    app = build_app(model, tokenizer, card, length)
    app.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=False)


if __name__ == "__main__":
    main()
