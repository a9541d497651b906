# Table 4: FreeCP + ClearCLIP on ADE20K-150 with templates everywhere
# (FreeCP default: templates for the initial vocabulary, descriptions for AP).
_base_ = ['../clearclip_ade.py']
model = dict(decode_head=dict(initial_text='templates', ap_text='templates'))
