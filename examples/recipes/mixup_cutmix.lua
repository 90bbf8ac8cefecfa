-- Strong regularisation: MixUp/CutMix on each training batch (soft targets), label smoothing,
-- RandAugment-style policy in the per-image chain, a model EMA for validation.
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local vtl = require "vtl"
local common = require "common"
local run, train, valid, model = common.setup("mixup_cutmix", {mixup_alpha = 0.8, cutmix_alpha = 1.0})
local cfg = run.config
local mix = vtl.transforms.MixUpCutMix {mixup_alpha = cfg.mixup_alpha, cutmix_alpha = cfg.cutmix_alpha, num_classes = run.num_classes,
                                       label_smoothing = 0.1}
local learn = common.learner(run, train, valid, model, {batch_transform = mix, ema = 0.99})
learn:fine_tune(cfg.epochs, {freeze_epochs = 1, base_lr = cfg.lr})
common.finish(run, learn)
