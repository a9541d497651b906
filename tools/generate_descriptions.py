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
LLM returns nothing usable is left out with a warning; ``FreeCPHead`` then
uses that class's template embedding (and warns). The class-name file is
read and checked as everywhere else
(:class:`mmseg_ovss.clip.vocabulary.Vocabulary`). The background class is
skipped unless ``--include-background``: the class named "background"
(:func:`mmseg_ovss.clip.vocabulary.find_background_class`), or else a first
line of more than five synonyms (the stuff words of VOC21/COCO-Object).
"""
import argparse
import json
import os
import re
import sys
import urllib.request
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..'))
from mmseg_ovss.clip.vocabulary import (Vocabulary,  # noqa: E402
                                        find_background_class)
from mmseg_ovss.freecp.descriptions import load_descriptions  # noqa: E402

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
                data = json.loads(reply.read().decode('utf-8'))
            answers += [choice['message']['content']
                        for choice in data.get('choices', [])]
        return answers

    return generate


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


def generate_descriptions(classes: Sequence[Sequence[str]],
                          generate: Generator, answers: int = 5,
                          existing: Optional[Dict[str, List[str]]] = None,
                          skip: Sequence[int] = (),
                          unique: bool = False,
                          instructions: Sequence[str] = INSTRUCTIONS
                          ) -> Dict[str, List[str]]:
    """Descriptions of every class but ``skip`` (keyed by its first
    synonym)."""
    table = dict(existing or {})
    for index, names in enumerate(classes):
        if index in skip:
            continue
        key = names[0]
        if table.get(key):
            continue
        try:
            sentences = describe_class(key, generate, answers, unique,
                                       instructions=instructions)
        except OSError as err:  # endpoint unreachable, timeout, ...
            warnings.warn(f'LLM request for {key!r} failed: {err}')
            sentences = []
        if sentences:
            table[key] = sentences
        else:
            warnings.warn(
                f'no usable description for class {key!r}; it is left out '
                'and FreeCPHead will use its template embedding instead')
    return table


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
    parser.add_argument('--resume', action='store_true',
                        help='keep classes already in the output file')
    return parser.parse_args(argv)


def main(argv=None) -> Dict[str, List[str]]:
    args = parse_args(argv)
    classes = read_class_lines(args.class_names)
    if args.api_base:
        generate = openai_generator(args.api_base, args.model,
                                    os.environ.get(args.api_key_env),
                                    args.temperature, args.max_tokens)
    else:
        generate = transformers_generator(args.hf_model, args.temperature,
                                          args.max_tokens, args.device)
    output = Path(args.output)
    existing = None
    if args.resume and output.is_file():
        existing = load_descriptions(output)
    skip = [] if args.include_background else background_lines(classes)
    table = generate_descriptions(classes, generate, args.answers, existing,
                                  skip, args.unique,
                                  INSTRUCTION_SETS[args.instructions])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(table, indent=1, ensure_ascii=False) + '\n',
                      encoding='utf-8')
    print(f'wrote {len(table)} classes to {output}')
    return table


if __name__ == '__main__':
    sys.exit(0 if main() is not None else 1)
