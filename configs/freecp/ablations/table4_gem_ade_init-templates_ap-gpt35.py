# Table 4 "FreeCP, Template / GPT-3.5": FreeCP + GEM on ADE20K-150 with
# templates for the initial queries and the GPT-3.5 descriptions for
# ambiguity purification (../gem_ade.py with the description slot of
# another source).
# The GPT-3.5 descriptions do not ship (the paper's are unpublished): write
# data/descriptions/gpt-3.5/ade150.json with tools/generate_descriptions.py
# (data/class_names/reference/ade150.txt, --api-base ... --model
# gpt-3.5-turbo) or point the slot at another file:
# --cfg-options model.decode_head.descriptions=/path/to/file.json
_base_ = ['../gem_ade.py']
model = dict(decode_head=dict(descriptions='data/descriptions/gpt-3.5/ade150.json'))
