"""Build ``data/name_maps/<benchmark>.json``: test class -> COCO-Stuff class.

DCP-CLIP's Tag Validation (Sec. III-D, Eq. 17) re-checks only the regions
predicted as classes *unseen* in training. The model trains on the 171
COCO-Stuff classes, so for each test vocabulary (ADE-847, PC-459, ADE-150,
PC-59, VOC-20) a map says which of its classes are a COCO-Stuff class under
another name. A class in the map is seen; a class not in the map is unseen.

Each file is a JSON object ``{test class name: COCO-Stuff class name}``
whose keys are the dataset's class names exactly as its ``METAINFO`` gives
them (what ``DatasetVocabularyHook`` hands the model), in label order, and
whose values are names of ``COCOStuff171Dataset``'s classes.

Matching rules, tried in this order (a weaker rule is used only when no
name of the class matched by a stronger one); a test class with several
comma-separated names (ADE-847: ``"sidewalk, pavement"``) tries each name
in its order at each rule, and the first hit wins:

1. exact: the lower-cased, stripped name equals a COCO-Stuff name after
   dropping COCO-Stuff's ``-other`` / ``-stuff`` suffixes (``sky-other`` is
   the concept "sky", ``desk-stuff`` "desk") and reading ``-`` as a space
   (``window-blind`` is "window blind");
2. synonym: :data:`SYNONYMS`, a short hand-written table of names of the
   same concept (``aeroplane`` = ``airplane``, ``sofa`` = ``couch``,
   ``tvmonitor`` = ``tv``, ...);
3. spacing: equal with spaces removed (PASCAL's ``pottedplant`` =
   ``potted plant``, ``trafficlight`` = ``traffic light``);
4. number: equal after turning a plural into the singular or back
   (``clouds`` = ``cloud``, ``shelves`` = ``shelf``, ``skis`` = ``ski``).

The few ADE-847 classes where a synonym is a COCO-Stuff name in another
sense are listed in :data:`HOMONYMS` and stay unseen (``andiron, firedog,
dog, dog-iron`` is not the animal); other homonyms are read in the COCO
sense (``mouse`` is the computer mouse, as in PASCAL Context), and
related but different concepts are not merged (``ship`` is not ``boat``,
``stairway`` is not ``stairs``, ``armchair`` is not ``chair``).

Run from the repository root (needs the package's datasets registered)::

    python tools/dataset_converters/make_name_maps.py           # write
    python tools/dataset_converters/make_name_maps.py --check   # compare
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = REPO_ROOT / 'data' / 'name_maps'

#: benchmark key -> the package's dataset class (test vocabulary)
BENCHMARKS = {
    'ade847': 'ADE20K847Dataset',
    'pc459': 'PascalContext459Dataset',
    'ade150': 'ADE20K150Dataset',
    'pc59': 'PascalContext59Dataset',
    'voc20': 'PascalVOC20Dataset',
}
TRAIN_DATASET = 'COCOStuff171Dataset'

#: Names of the same concept as a COCO-Stuff class (rule 2): test name ->
#: COCO-Stuff name (after rule 1's normalisation).
SYNONYMS = {
    'aeroplane': 'airplane',
    'plane': 'airplane',
    'motorbike': 'motorcycle',
    'sofa': 'couch',
    'tvmonitor': 'tv',
    'tv monitor': 'tv',
    'television': 'tv',
    'television receiver': 'tv',
    'television set': 'tv',
    'telly': 'tv',
    'fridge': 'refrigerator',
    'icebox': 'refrigerator',
    'doughnut': 'donut',
    'hair dryer': 'hair drier',
    'cellphone': 'cell phone',
    'cellular phone': 'cell phone',
    'mobile phone': 'cell phone',
    'ball': 'sports ball',
    'blind': 'window blind',
    'windowpane': 'window',
    'earth': 'ground',
    'sidewalk': 'pavement',
}
#: Test classes never mapped: one of their names is a COCO-Stuff name in
#: another sense (WordNet synsets of ADE-847).
HOMONYMS = {
    'andiron, firedog, dog, dog-iron': 'a fireplace support, not the animal',
    'buffet, counter, sideboard': 'a sideboard, not a kitchen counter',
    'patty, cake': 'a patty of food, not a cake',
}
COCO_SUFFIXES = ('-other', '-stuff', '-merged')


def normalise(name: str) -> str:
    """Lower case, stripped, single spaces."""
    return ' '.join(name.strip().lower().split())


def coco_concept(name: str) -> str:
    """The concept a COCO-Stuff class name stands for (rule 1)."""
    name = normalise(name)
    for suffix in COCO_SUFFIXES:
        if name.endswith(suffix):
            name = name[:-len(suffix)]
    return name.replace('-', ' ')


def number_variants(name: str) -> List[str]:
    """The name as singular and plural (rule 4), the name itself excluded."""
    out = []
    if name.endswith('ves'):
        out += [name[:-3] + 'f', name[:-3] + 'fe']
    if name.endswith('ies'):
        out.append(name[:-3] + 'y')
    if name.endswith('es'):
        out.append(name[:-2])
    if name.endswith('s') and not name.endswith('ss'):
        out.append(name[:-1])
    if name.endswith('y'):
        out.append(name[:-1] + 'ies')
    if name.endswith('f'):
        out.append(name[:-1] + 'ves')
    out += [name + 's', name + 'es']
    return [v for v in out if v and v != name]


def test_names(class_name: str) -> List[str]:
    """The names of one test class (ADE-847 lists synonyms, ', ')."""
    return [normalise(n) for n in class_name.split(',') if n.strip()]


def match(class_name: str, train_classes: Sequence[str]) -> Optional[str]:
    """The COCO-Stuff class a test class is, or None (unseen)."""
    if class_name in HOMONYMS:
        return None
    concepts: Dict[str, str] = {}
    for coco in train_classes:
        concepts.setdefault(coco_concept(coco), coco)
    unspaced = {key.replace(' ', ''): coco for key, coco in concepts.items()}
    names = test_names(class_name)
    rules = (
        lambda n: concepts.get(n),
        lambda n: concepts.get(SYNONYMS[n]) if n in SYNONYMS else None,
        lambda n: unspaced.get(n.replace(' ', '')),
        lambda n: next((concepts[v] for v in number_variants(n)
                        if v in concepts), None),
    )
    for rule in rules:
        for name in names:
            hit = rule(name)
            if hit is not None:
                return hit
    return None


def build_map(test_classes: Iterable[str],
              train_classes: Sequence[str]) -> Dict[str, str]:
    """``{test class: COCO-Stuff class}`` for the test classes that match,
    in the test vocabulary's label order."""
    out = {}
    for name in test_classes:
        hit = match(name, train_classes)
        if hit is not None:
            out[name] = hit
    return out


def dataset_classes(dataset_type: str) -> List[str]:
    import mmseg_ovss  # noqa: F401  (registers the datasets)
    from mmseg.registry import DATASETS
    return list(DATASETS.get(dataset_type).METAINFO['classes'])


def render(mapping: Dict[str, str]) -> str:
    return json.dumps(mapping, indent=1, ensure_ascii=False) + '\n'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out-dir', type=Path, default=OUT_DIR)
    parser.add_argument('--check', action='store_true',
                        help='compare with the files instead of writing')
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    train = dataset_classes(TRAIN_DATASET)
    stale = []
    for key, dataset_type in BENCHMARKS.items():
        classes = dataset_classes(dataset_type)
        text = render(build_map(classes, train))
        path = args.out_dir / f'{key}.json'
        mapped = len(json.loads(text))
        print(f'{key}: {mapped} of {len(classes)} classes are COCO-Stuff '
              f'classes (seen), {len(classes) - mapped} unseen')
        if args.check:
            if not path.is_file() or path.read_text(encoding='utf-8') != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding='utf-8')
    if stale:
        print('out of date (rerun without --check): ' + ', '.join(stale))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
