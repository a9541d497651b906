# MaskCLIP baseline at FreeCP's settings on PASCAL Context 60 (FreeCP paper Tables 1, 3
# and 4 "Baseline"; Table 2 quotes the official MaskCLIP numbers instead,
# configs/baselines/maskclip_pc60.py). The FreeCP config ../maskclip_pc60.py with the
# baseline's head: same strategy, vocabulary, prompts, short side 448 and
# 384/112 windows; settings of the baseline used here:
# - strategy: FreeCP's MaskCLIP variant (value embeddings, FFN kept; official: ffn=False);
# - scoring: CosineSimilarityHead, softmax(tau * cos) over all queries, max over
#   synonyms, tau 50 (configs/baselines/maskclip_pc60.py);
# - no prob_thd, area_thd or PAMR (FreeCP's settings; the official baseline's
#   rules are --cfg-options model.prob_thd=... model.area_thd=...).
_base_ = ['../maskclip_pc60.py']
model = dict(
    decode_head=dict(
        _delete_=True, type='CosineSimilarityHead', logit_scale=50.0))
