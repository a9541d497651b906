"""Write FreeCP's fine-grained class descriptions with an LLM.

The recipe of the paper (Sec. 4.2): three instructions per class name -
appearance, distinguishing parts, typical context - and several sampled
answers to each (5 by default: 15 sentences per class). The output is
``{class name: [sentence, ...]}`` as ``data/descriptions/<vocab>.json``.

The LLM is reached either through an OpenAI-compatible chat endpoint
(vLLM, llama.cpp server, FastChat, OpenAI, ...)::

    python tools/generate_descriptions.py data/class_names/ade150.txt \
        data/descriptions/ade150.json \
        --api-base http://localhost:8000/v1 --model lmsys/vicuna-13b-v1.5

or through a local transformers model folder (no download)::

    python tools/generate_descriptions.py data/class_names/voc20.txt \
        out.json --hf-model /models/vicuna-13b-v1.5

Every usable answer is kept, repeats included (the paper averages all 15;
a repeated answer weighs more), unless ``--unique``. A class for which the
LLM returns nothing usable, or whose request fails, is left out with a
warning; ``FreeCPHead`` then uses that class's template embedding (and
warns). The output is rewritten atomically after each class, so an
interrupted run keeps what it wrote and ``--resume`` continues it. An
existing output is kept unless ``--resume`` (describe only the classes it
lacks) or ``--overwrite`` (regenerate every class) is given; neither ever
drops one of its entries. The class-name file is
read and checked as everywhere else
(:class:`mmseg_ovss.clip.vocabulary.Vocabulary`). The background class is
skipped unless ``--include-background``: the class named "background"
(:func:`mmseg_ovss.clip.vocabulary.find_background_class`), or else a first
line of more than five synonyms (the stuff words of VOC21/COCO-Object).
"""
import argparse
import http.client
import json
import math
import os
import re
import sys
import urllib.request
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..'))
from mmseg_ovss.clip.vocabulary import (Vocabulary,  # noqa: E402
                                        find_background_class)
from mmseg_ovss.freecp.descriptions import (  # noqa: E402
    description_key, load_descriptions)
from mmseg_ovss.utils.errors import (OVSSConfigError,  # noqa: E402
                                     OVSSDataError)

# The package's own instructions (not the paper's: the authors' prompts are
# in a supplement that is not public), one per kind of description the
# paper names (appearance, distinguishing parts, typical context).
PACKAGE_INSTRUCTIONS = (
    'Describe in one sentence what a {name} looks like in a photo: its '
    'shape, colours and material.',
    'In one sentence, name the visible parts or features that distinguish a '
    '{name} from similar things.',
    'In one sentence, describe the typical place, surroundings or objects '
    'next to which a {name} appears in a photo.',
)
# Instructions in the style of the authors' released answers
# (chenqi1126/FreeCP prompts/vicuna13b/*.py: 20 answers per class, half
# "A {name} has ...", "A {name} is ..." feature lists, half adjective lists
# of its visual appearance). A reconstruction from those answers, not the
# authors' text.
AUTHORS_STYLE_INSTRUCTIONS = (
    'Describe what a {name} looks like in one sentence.',
    'Describe the features a {name} has, in one sentence of noun phrases '
    'starting with "A {name} has".',
    'Describe the visual appearance of a {name} with adjectives, in one '
    'sentence starting with "A {name} is".',
)
INSTRUCTION_SETS = {'package': PACKAGE_INSTRUCTIONS,
                    'authors-style': AUTHORS_STYLE_INSTRUCTIONS}
INSTRUCTIONS = PACKAGE_INSTRUCTIONS
SYSTEM_PROMPT = ('You write short, factual, visual descriptions of object '
                 'and scene categories for an image recognition system. '
                 'Answer with a single sentence and nothing else.')

Generator = Callable[[str, int], List[str]]
#: What one failed LLM request raises: no connection, timeout, HTTP error
#: (OSError, http.client.HTTPException), a reply that is not JSON or not a
#: chat completion (ValueError), a reply without a field (KeyError).
REQUEST_ERRORS = (OSError, http.client.HTTPException, ValueError, KeyError)


def read_class_lines(path: str) -> List[List[str]]:
    """Class-name file -> synonyms per class (one class a line); a shared
    synonym is allowed here (the file only names what to describe)."""
    vocabulary = Vocabulary.from_file(path, shared_synonyms='allow')
    return [list(names) for names in vocabulary.synonyms]


def background_lines(classes: Sequence[Sequence[str]]) -> List[int]:
    """Classes not to describe: the one named "background", or else a
    first line of stuff words (more than five synonyms)."""
    background = find_background_class(classes)
    if background is not None:
        return [background]
    return [0] if classes and len(classes[0]) > 5 else []


def clean_answer(text: str) -> Optional[str]:
    """First sentence of an answer, without numbering, quotes or labels."""
    text = text.strip().split('\n')[0].strip()
    text = re.sub(r'^(\d+[.)]|[-*•])\s*', '', text)
    text = re.sub(r'^(answer|description)\s*:\s*', '', text, flags=re.I)
    text = text.strip(' "\'')
    match = re.match(r'(.+?[.!?])(\s|$)', text)
    if match:
        text = match.group(1)
    if len(text.split()) < 3:
        return None
    return text[0].upper() + text[1:] if text[-1] in '.!?' else text + '.'


def openai_generator(api_base: str, model: str, api_key: Optional[str],
                     temperature: float, max_tokens: int,
                     timeout: float = 120.0) -> Generator:
    """Sample answers from an OpenAI-compatible ``/chat/completions``."""
    url = api_base.rstrip('/') + '/chat/completions'

    def generate(prompt: str, num: int) -> List[str]:
        answers = []
        for _ in range(num):  # many servers ignore n > 1
            body = json.dumps({
                'model': model,
                'messages': [{'role': 'system', 'content': SYSTEM_PROMPT},
                             {'role': 'user', 'content': prompt}],
                'temperature': temperature,
                'max_tokens': max_tokens,
            }).encode('utf-8')
            headers = {'Content-Type': 'application/json'}
            if api_key:
                headers['Authorization'] = f'Bearer {api_key}'
            request = urllib.request.Request(url, data=body, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                text = reply.read().decode('utf-8')
            answers += reply_answers(text, url)
        return answers

    return generate


def reply_answers(text: str, url: str) -> List[str]:
    """The answers of a ``/chat/completions`` reply; a ValueError naming
    the problem when it is not one (an HTML error page, an error object,
    choices without a message)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f'the reply of {url} is not JSON ({err}); it starts '
                         f'with {text[:80]!r}') from err
    choices = data.get('choices') if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        error = data.get('error') if isinstance(data, dict) else None
        raise ValueError(f'the reply of {url} has no choices'
                         + (f' (error: {error})' if error else '')
                         + f': {text[:120]!r}')
    answers = []
    for choice in choices:
        message = choice.get('message') if isinstance(choice, dict) else None
        content = message.get('content') if isinstance(message, dict) \
            else None
        if not isinstance(content, str):
            raise ValueError(f'a choice of the reply of {url} has no '
                             f'message content: {choice!r:.120}')
        answers.append(content)
    return answers


def transformers_generator(model_path: str, temperature: float,
                           max_tokens: int, device: str = 'cpu'
                           ) -> Generator:
    """Sample answers from a local transformers causal LM folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not Path(model_path).is_dir():
        raise FileNotFoundError(
            f'--hf-model {model_path!r} is not a local folder; download the '
            'model (e.g. lmsys/vicuna-13b-v1.5) and pass its path')
    tokenizer = AutoTokenizer.from_pretrained(model_path,
                                              local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        model_path, local_files_only=True).to(device).eval()

    def generate(prompt: str, num: int) -> List[str]:
        import torch
        if getattr(tokenizer, 'chat_template', None):
            text = tokenizer.apply_chat_template(
                [{'role': 'system', 'content': SYSTEM_PROMPT},
                 {'role': 'user', 'content': prompt}],
                tokenize=False, add_generation_prompt=True)
        else:
            text = f'{SYSTEM_PROMPT}\nUSER: {prompt}\nASSISTANT:'
        inputs = tokenizer(text, return_tensors='pt').to(device)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=True,
                                 temperature=temperature,
                                 max_new_tokens=max_tokens,
                                 num_return_sequences=num,
                                 pad_token_id=pad)
        start = inputs['input_ids'].shape[1]
        return tokenizer.batch_decode(out[:, start:],
                                      skip_special_tokens=True)

    return generate


def describe_class(name: str, generate: Generator, answers: int,
                   unique: bool = False,
                   instructions: Sequence[str] = INSTRUCTIONS) -> List[str]:
    """The paper's recipe for one class name: 3 instructions x answers
    (repeated answers kept unless ``unique``)."""
    sentences = []
    for instruction in instructions:
        prompt = instruction.format(name=name)
        for raw in generate(prompt, answers):
            sentence = clean_answer(raw)
            if sentence and not (unique and sentence in sentences):
                sentences.append(sentence)
    return sentences


def _covering(table: Dict[str, List[str]], names: Sequence[str]
              ) -> List[str]:
    """Entries of ``table`` that name one of ``names`` (matched as
    :func:`mmseg_ovss.freecp.descriptions.description_key`)."""
    keys = {description_key(n) for n in names}
    return [entry for entry in table if description_key(entry) in keys]


def _replaced(table: Dict[str, List[str]], old: Sequence[str], key: str,
              sentences: List[str]) -> Dict[str, List[str]]:
    """``table`` with the entries ``old`` replaced by one ``key`` entry
    (where the first of them was; appended when there is none)."""
    if not old:
        return {**table, key: sentences}
    out = {}
    for entry, value in table.items():
        if entry == old[0]:
            out[key] = sentences
        elif entry not in old:
            out[entry] = value
    return out


def generate_descriptions(classes: Sequence[Sequence[str]],
                          generate: Generator, answers: int = 5,
                          existing: Optional[Dict[str, List[str]]] = None,
                          skip: Sequence[int] = (),
                          unique: bool = False,
                          instructions: Sequence[str] = INSTRUCTIONS,
                          overwrite: bool = False,
                          save: Optional[Callable[[Dict], None]] = None
                          ) -> Tuple[Dict[str, List[str]], List[str],
                                     List[str]]:
    """Describe every class but ``skip`` (keyed by its first synonym).

    A class that an entry of ``existing`` names (any synonym, matched as
    the head matches) is kept unless ``overwrite``; then its entries are
    replaced by the new one, or kept when the class fails. An entry
    written in this run is never replaced. ``save`` gets
    the table after each new class. Returns the table, the classes
    described and the classes that failed.
    """
    table = dict(existing or {})
    done, failed = [], []
    for index, names in enumerate(classes):
        if index in skip:
            continue
        key = names[0]
        old = _covering(table, names)
        mine = [entry for entry in old if entry in done]
        if mine:  # a synonym shared with a class described in this run
            warnings.warn(
                f'class {key!r} shares a synonym with the entry {mine[0]!r} '
                'written in this run, so it is not described again (the '
                'head would match both classes to that entry)')
            continue
        if not overwrite and any(table[entry] for entry in old):
            continue
        fate = (f'its earlier entries {old} are kept' if old else
                'it is left out (rerun with --resume to retry it) and '
                'FreeCPHead will use its template embedding instead')
        try:
            sentences = describe_class(key, generate, answers, unique,
                                       instructions=instructions)
        except REQUEST_ERRORS as err:
            warnings.warn(f'LLM request for {key!r} failed '
                          f'({type(err).__name__}: {err}); {fate}')
            failed.append(key)
            continue
        if not sentences:
            warnings.warn(f'no usable description for class {key!r}; {fate}')
            failed.append(key)
            continue
        table = _replaced(table, old, key, sentences)
        done.append(key)
        if save is not None:
            save(table)
    return table, done, failed


def write_table(path: Path, table: Dict[str, List[str]]) -> None:
    """Write ``table`` to ``path`` atomically (a temporary file in the same
    folder, then ``os.replace``): ``path`` holds the old or the new table,
    never a part of one."""
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(table, indent=1, ensure_ascii=False) + '\n',
                       encoding='utf-8')
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OVSSDataError(
            f'cannot write the description file {path} ({err}); give a '
            'writable path with free space') from err
    except BaseException:  # Ctrl-C while writing: no temporary file left
        tmp.unlink(missing_ok=True)
        raise


def read_existing(path: Path, resume: bool, overwrite: bool
                  ) -> Optional[Dict[str, List[str]]]:
    """The table already in ``path`` (None when there is none); refused
    unless ``resume`` or ``overwrite`` allows extending it."""
    if path.is_dir():
        raise OVSSConfigError(
            f'output {path} is a folder; give the JSON file to write, e.g. '
            f'{path / "descriptions.json"}')
    if not path.exists():
        return None
    if not (resume or overwrite):
        raise OVSSConfigError(
            f'output {path} already exists; pass --resume to keep its '
            'entries and describe only the classes it lacks, --overwrite to '
            'regenerate every class (each entry is replaced when its new '
            'sentences arrive), or give another output path')
    try:
        return dict(load_descriptions(path.resolve()))
    except OVSSDataError as err:
        raise OVSSDataError(
            f'output {path} exists but is not a description file this tool '
            f'can extend ({err}); fix it, move it away or give another '
            'output path') from err


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Generate FreeCP class descriptions with an LLM')
    parser.add_argument('class_names', help='class-name file (one a line)')
    parser.add_argument('output', help='description JSON to write')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--api-base', help='OpenAI-compatible base URL, '
                        'e.g. http://localhost:8000/v1')
    source.add_argument('--hf-model', help='local transformers model folder')
    parser.add_argument('--model', default='vicuna-13b-v1.5',
                        help='model name sent to the endpoint')
    parser.add_argument('--api-key-env', default='OPENAI_API_KEY',
                        help='environment variable holding the API key')
    parser.add_argument('--answers', type=int, default=5,
                        help='answers sampled per instruction (paper: 5)')
    parser.add_argument('--temperature', type=float, default=0.7)
    parser.add_argument('--max-tokens', type=int, default=60)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--include-background', action='store_true',
                        help='also describe the background class (named '
                        '"background", or a first line of stuff words)')
    parser.add_argument('--unique', action='store_true',
                        help='drop repeated answers (default: keep them, '
                        'as the paper averages all answers)')
    parser.add_argument('--instructions', choices=sorted(INSTRUCTION_SETS),
                        default='package',
                        help="'package': this package's own instructions "
                        "(appearance, parts, context); 'authors-style': in "
                        "the style of the authors' released Vicuna answers "
                        '(looks like / has / visual appearance); neither is '
                        "the paper's unpublished text")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument('--resume', action='store_true',
                          help='keep the classes already in the output file '
                          'and describe the others')
    existing.add_argument('--overwrite', action='store_true',
                          help='regenerate every class of an existing output '
                          'file (an entry is replaced once its new sentences '
                          'arrive; failed classes keep theirs)')
    args = parser.parse_args(argv)
    check_numbers(args)
    return args


def check_numbers(args) -> None:
    """Refuse numeric options that cannot give a description."""
    if args.answers < 1:
        raise OVSSConfigError(
            f'--answers {args.answers}: give at least 1 answer per '
            'instruction (the paper samples 5)')
    if args.max_tokens < 1:
        raise OVSSConfigError(
            f'--max-tokens {args.max_tokens}: give at least 1 (default 60, '
            'enough for one sentence)')
    temperature = args.temperature
    if not math.isfinite(temperature) or temperature < 0 or (
            args.hf_model and temperature == 0):
        raise OVSSConfigError(
            f'--temperature {temperature}: give a finite number '
            + ('> 0 (--hf-model samples)' if args.hf_model else '>= 0')
            + ', e.g. 0.7')


def main(argv=None) -> Dict[str, List[str]]:
    args = parse_args(argv)
    classes = read_class_lines(args.class_names)
    output = Path(args.output)
    existing = read_existing(output, args.resume, args.overwrite)
    if args.api_base:
        generate = openai_generator(args.api_base, args.model,
                                    os.environ.get(args.api_key_env),
                                    args.temperature, args.max_tokens)
    else:
        generate = transformers_generator(args.hf_model, args.temperature,
                                          args.max_tokens, args.device)
    skip = [] if args.include_background else background_lines(classes)
    table, done, failed = generate_descriptions(
        classes, generate, args.answers, existing, skip, args.unique,
        INSTRUCTION_SETS[args.instructions], overwrite=args.overwrite,
        save=lambda rows: write_table(output, rows))
    if failed and not done:
        state = (f'{output} is unchanged' if existing is not None else
                 f'{output} was not written')
        raise OVSSDataError(
            f'no description could be generated for any of the '
            f'{len(failed)} class(es) to describe ({failed[:5]}); {state}. '
            'Check that the LLM answers (--api-base, --model, --hf-model); '
            'the warnings above give each failure')
    if not failed and not done:
        print(f'{output} already describes every class; nothing to do')
    else:
        print(f'wrote {len(table)} classes to {output} ({len(done)} new)')
    if failed:
        print(f'{len(failed)} class(es) failed: {failed[:10]}; rerun with '
              '--resume to retry them', file=sys.stderr)
    return table


if __name__ == '__main__':
    sys.exit(0 if main() is not None else 1)
