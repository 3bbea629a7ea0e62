"""Plant the classic visual-prompting bugs, one at a time, in a copy of this repository, and check that the test suite
fails on each: a test that still passes with the bug in place guards nothing.

    python tests/plant_bugs.py            # every bug (about 10 minutes on a 2-core CPU)
    python tests/plant_bugs.py detach     # the bugs whose name contains 'detach'
    python tests/plant_bugs.py --fast     # the fast tier alone (python -m pytest without --e2e)

Not collected by pytest (a developer's tool); its last run is quoted in docs/tests.md.
"""
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = False  # --fast: run the named tests without --e2e

# name: (file, the line as it is, the line with the bug, the tests that must fail)
BUGS = {
    'lorvp prompt detached': ('baselines.py', 'return x + torch.bmm(self.B, self.A)',
                              'return x + torch.bmm(self.B, self.A).detach()', 'tests/test_methods.py'),
    'border prompt detached': ('baselines.py', '        x = x + self.border()\n',
                               '        x = x + self.border().detach()\n', 'tests/test_methods.py'),
    'vpt tokens detached': ('baselines.py', 'prompt = self.prompts[i].expand(x.shape[0], -1, -1).to(x.dtype)',
                            'prompt = self.prompts[i].expand(x.shape[0], -1, -1).to(x.dtype).detach()',
                            'tests/test_methods.py'),
    'lorsp W detached': ('lorsp.py', 'A = (x @ self.W).unflatten(-1, (self.n, self.r))  # (B, c, L, n r) ->',
                         'A = (x @ self.W.detach()).unflatten(-1, (self.n, self.r))  # (B, c, L, n r) ->',
                         'tests/test_methods.py'),
    'lpf W detached': ('lorsp.py', 'A = (x @ m.W).unflatten(-1, (m.n, m.r)).mean(-2)',
                       'A = (x @ m.W.detach()).unflatten(-1, (m.n, m.r)).mean(-2)', 'tests/test_methods.py'),
    'lotep channel factor detached': ('lotep.py', "return torch.einsum('ti,tj,tk->ijk', self.a, self.b, self.c)",
                                      "return torch.einsum('ti,tj,tk->ijk', self.a.detach(), self.b, self.c)",
                                      'tests/test_methods.py'),
    'input prompt after normalization': ('backbones.py', 'x = self.normalize(self.prompt(x))',
                                         'x = self.prompt(self.normalize(x))',
                                         'tests/test_methods.py'),
    'deep prompt one block late': ('lotep.py', 'blocks[l].register_forward_pre_hook(AddPrompt(self, l))',
                                   'blocks[l + 1].register_forward_pre_hook(AddPrompt(self, l))',
                                   'tests/test_lotep.py'),
    'swin prompt in the wrong layout': ('lotep.py', 'return P.permute(1, 2, 0)  # (H, W, C)',
                                        'return P.permute(2, 1, 0)  # (H, W, C)', 'tests/test_lotep.py'),
    'vit CLS token prompted': ('lotep.py', 'nn.functional.pad(tokens, (0, 0, self.prefix, 0))',
                               'nn.functional.pad(tokens, (0, 0, 0, self.prefix))', 'tests/test_lotep.py'),
    'deep prompt added in place': ('lotep.py', 'return (x + self.prompts.prompt(self.l).to(x.dtype),)',
                                   'return (x.add_(self.prompts.prompt(self.l).to(x.dtype)) if not '
                                   'torch.is_grad_enabled() else x + self.prompts.prompt(self.l).to(x.dtype),)',
                                   'tests/test_lotep.py'),
    'shape probe in train mode': ('lotep.py', '    backbone.eval()\n    try:\n', '    try:\n', 'tests/test_lotep.py'),
    'backbone left in train mode': ('backbones.py', '            self.backbone.eval()\n', '            pass\n',
                                    'tests/test_methods.py'),
    'lotep channel factor not zero': ('lotep.py', 'self.a = nn.Parameter(torch.zeros(rank, C))',
                                      'self.a = nn.Parameter(torch.randn(rank, C))', 'tests/test_methods.py'),
    'tucker core zero': ('lotep.py', "core_init: str = 'identity'):", "core_init: str = 'zero'):",
                         'tests/test_lotep.py'),
    'eq8 denominator d': ('lotep.py', 'x = 1 + (r0 - 1) / 2 * (1 + math.cos(math.pi * l / (d - 1)))',
                          'x = 1 + (r0 - 1) / 2 * (1 + math.cos(math.pi * l / d))', 'tests/test_lotep.py'),
    'lorvp A init std 1': ('baselines.py', 'channels: int = 3, init_std: float = 0.01):',
                           'channels: int = 3, init_std: float = 1.0):', 'tests/test_baselines.py'),
    'label mapping not one-to-one': ('baselines.py', '        counts[s, :] = -math.inf\n', '',
                                     'tests/test_baselines.py'),
    'lif soft reset': ('lorsp.py', 'V = H * (1 - S) + v_reset * S', 'V = H - v_th * S', 'tests/test_lorsp.py'),
    'heaviside(0) = 0': ('lorsp.py', 'return (v >= 0).to(v.dtype)', 'return (v > 0).to(v.dtype)',
                         'tests/test_lorsp.py'),
    'lif input not scaled by 1/tau': ('lorsp.py', 'H = V + (P_t - (V - v_reset)) / tau',
                                      'H = V + (P_t - (V - v_reset))', 'tests/test_lorsp.py'),
    'lora B not zero': ('baselines.py', 'self.B = nn.Parameter(torch.zeros(len(self.parts), rows.pop(), rank))',
                        'self.B = nn.Parameter(torch.randn(len(self.parts), rows.pop(), rank))',
                        'tests/test_methods.py'),
    'lora scaling alpha instead of alpha / r': ('baselines.py', 'self.scaling = alpha / rank', 'self.scaling = alpha',
                                                'tests/test_baselines.py'),
    'evp normalized over the border only': ('baselines.py', 'p.grad / (self.prompt.canvas_grad.norm() + 1e-12)',
                                            'p.grad / (p.grad.norm() + 1e-12)', 'tests/test_baselines.py'),
    'resume forgets the optimizer': ('train.py', "        opt.load_state_dict(ckpt['optimizer'])\n", '',
                                     'tests/test_train.py'),
    'torchrun loss not scaled by the processes': ('distributed.py', 'return size / n if len(range(rank, n, size)) > 0',
                                                  'return 1 / n if len(range(rank, n, size)) > 0',
                                                  'tests/test_train.py -k torchrun'),
    'label-map counts not summed over processes': (
        'baselines.py', 'self.set_mapping(loop.reduce(self.count_sources(loop.features, loop.batches())))',
        'self.set_mapping(self.count_sources(loop.features, loop.batches()))', 'tests/test_train.py -k torchrun'),
    'evp canvas gradient not averaged': ('baselines.py', 'loop.reduce(self.canvas_grad, mean=True)',
                                         'self.canvas_grad.mul_(1)', 'tests/test_train.py -k torchrun'),
    'nccl group only': ('distributed.py', "return 'cpu:gloo,cuda:nccl' if cuda else 'gloo'",
                        "return 'nccl' if cuda else 'gloo'", 'tests/test_train.py -k group'),
    'bench before saving the prompt file': (
        'runs.py', "    summary['prompt_file'] = save_prompt(",
        "    __import__('tools.bench', fromlist=['bench']).train_step(a, model, torch.rand(4, 3, a.img_size, a.img_size, "
        "device=a.device), torch.zeros(4, dtype=torch.long, device=a.device))\n    summary['prompt_file'] = save_prompt(",
        'tests/test_train.py -k prompt_file'),
    'deep prompt hook keeps a batch-sized tensor': (
        'lotep.py', 'return (x + self.prompts.prompt(self.l).to(x.dtype),)',
        'return (x + self.prompts.prompt(self.l).to(x.dtype) * torch.ones_like(x),)', 'tests/test_bench.py'),
    'memory counts a storage twice': ('tools/bench.py', 'saved[storage.data_ptr()] = storage.nbytes()',
                                      'saved[id(t)] = storage.nbytes()', 'tests/test_bench.py'),
    'bench table replaced, not merged': ('tools/bench.py',
                                         "merged = {r['method']: r for r in (previous or {}).get('rows', [])}",
                                         'merged = {}', 'tests/test_bench.py'),
    'explode rule off': ('train.py', '    elif loss > line:', '    elif False:',
                         'tests/test_train.py -k explode'),
    'holm not applied': ('tools/stats.py', 'running = max(running, min(1.0, (len(tested) - rank) * p))', 'running = p',
                         'tests/test_compare.py -k holm'),
    'claimed size read against the raw interval in the Holm column': (
        'tools/stats.py', "verdict(bonferroni(ci, m), c['claimed'], p_holm)", "verdict(ci, c['claimed'], p_holm)",
        'tests/test_compare.py -k holm'),
    'edge never extended': ('tools/protocols.py', 'for axis, _, beyond, arms in chosen if beyond is not None]',
                            'for axis, _, beyond, arms in chosen if False]', 'tests/test_compare.py -k edge'),
    'a diverged run run again': ('tools/compare.py', "    if os.path.exists(job.out + '.diverged'):", '    if False:',
                                 'tests/test_compare.py -k same_grid'),
    'edge where the progression ends not said': ('tools/protocols.py', 'in chosen if beyond is None and finished]',
                                                 'in chosen if False]', 'tests/test_compare.py -k edge'),
    'a grid note kept twice': ('tools/tables.py', '    return [n for n in previous if key(n) not in mine] + list(now)',
                               '    return list(dict.fromkeys(previous + now))', 'tests/test_compare.py -k edge'),
    'tuning table with lr and init swapped': ('tools/tables.py', "cell(f'lr {lr} init {i}') for i in inits",
                                              "cell(f'lr {i} init {lr}') for i in inits",
                                              'tests/test_compare.py -k tabled'),
    'lorsp spikes do not gate the factors': ('lorsp.py', 'P_hat = P_hat + S_k * P_k  # Eq. (9)',
                                             'P_hat = P_hat + P_k  # Eq. (9)', 'tests/test_lorsp.py'),
    'top-k keeps k + 1': ('lorsp.py', 'keep = flat.shape[1] - round(m.sparsity * flat.shape[1])',
                          'keep = flat.shape[1] - round(m.sparsity * flat.shape[1]) + 1',
                          'tests/test_lorsp.py -k topk'),
    'folder labels shifted by one': ('data.py', 'labels += [found[c]] * len(names)',
                                     'labels += [found[c] + 1] * len(names)', 'tests/test_layouts.py'),
    'vtab labels shifted by one': ('formats/vtab.py', '        label = int(parts[1])\n',
                                   '        label = int(parts[1]) + 1\n', 'tests/test_layouts.py -k vtab_tasks'),
    'train800val200 used for tuning': ('formats/vtab.py', "'tune': ('train800.txt', 'val200.txt', 'test.txt')",
                                       "'tune': ('train800val200.txt', 'val200.txt', 'test.txt')",
                                       'tests/test_layouts.py -k vtab_tasks'),
    'group mean computed as the task mean': ('tools/tables.py',
                                             'mean_of_group_means=statistics.mean(group_means.values()))',
                                             'mean_of_group_means=statistics.mean(accs.values()))',
                                             'tests/test_layouts.py -k averages'),
    'evp mode mapping one-to-one': ('baselines.py', 'self.mapping.copy_(counts.argmax(0).view(-1, 1))',
                                    'self.mapping.copy_(greedy_mapping(counts.cpu(), 1))',
                                    'tests/test_baselines.py'),
    'prop1 adam control runs sgd': ('theory/prop1_rank_bound.py', "if s.control == 'adam' else", "if False else",
                                    'tests/test_theory.py'),
    'nan loss accepted': ('train.py', '    if not math.isfinite(loss):', '    if False:',
                          'tests/test_train.py'),
    'a run known by where it lies': ('tools/compare.py', 'identity(made_by) != job.identity:', 'made_by != job.command:',
                                     'tests/test_compare.py -k read_back_from'),
    'a run launched without its launch lock': ('tools/compare.py',
                                               '        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)\n',
                                               '        pass\n', 'tests/test_compare.py -k waited_for'),
    'resume refuses the data read from elsewhere': ('flags.py', "RESUMABLE = ('device', 'workers', 'data_dir',",
                                                    "RESUMABLE = ('device', 'workers',",
                                                    'tests/test_train.py -k resume_refuses'),
    'progress counts every tuning run as left': ('tools/tables.py', "tune_left = tried.count('pending')",
                                                 'tune_left = len(tried)', 'tests/test_compare.py -k report_tables'),
    '16-bit image clipped to white': ('formats/images.py', "WIDE = ('I;16', 'I;16L', 'I;16B', 'I;16N')", "WIDE = ()",
                                      'tests/test_own_data.py -k viewer'),
    'transparency dropped, not composited': (
        'formats/images.py', "    if mode in ('LA', 'La', 'PA', 'RGBA', 'RGBa') or 'transparency' in image.info:",
        '    if False:', 'tests/test_own_data.py -k viewer'),
    'exif orientation ignored': ('formats/images.py', '    image = ImageOps.exif_transpose(image)\n', '',
                                 'tests/test_own_data.py -k exif'),
    'exif orientation ignored by the jpeg decoder': ('formats/images.py', 'apply_exif_orientation=True)',
                                                     'apply_exif_orientation=False)', 'tests/test_own_data.py -k exif'),
    'images not decoded at load': ('formats/images.py', '                decode(raw, self._where(i), self.size)\n',
                                   '                pass\n', 'tests/test_own_data.py -k truncated'),
    'a byte-order mark kept': ('formats/text.py', "        return raw.decode('utf-8-sig')",
                               "        return raw.decode('utf-8')", 'tests/test_own_data.py -k editor'),
    'fgvc names the sorted index': ('formats/fgvc.py', '    train.classes = [str(c) for c in ids]\n', '',
                                    'tests/test_own_data.py -k json_ids'),
    'fgvc string ids sorted as text': ('formats/fgvc.py',
                                       "    return sorted(ids, key=lambda c: (int(c), str(c)) if numeric else c)",
                                       "    return sorted(ids, key=str)", 'tests/test_own_data.py -k json_ids'),
    'predict folder classes not matched by name': (
        'tools/predict.py', '    if list(classes) == list(trained):', '    if True:',
        'tests/test_own_data.py -k by_name'),
    'summary not checked against its metrics': ('tools/compare.py', '    if differ:', '    if False:',
                                                'tests/test_own_data.py -k damaged'),
    'imagenet label off by one': ('formats/imagenet.py',
                                  '        labels += [int(d) if by_index else index[d]] * len(images)',
                                  '        labels += [int(d) if by_index else index[d] + 1] * len(images)',
                                  'tests/test_imagenet.py'),
    'imagenet-r scored over 1000 classes': ('tools/predict.py', '    if a.dataset in imagenet.RESTRICTED:  # ImageNet-R',
                                            '    if False:  # ImageNet-R', 'tests/test_imagenet.py -k evaluated'),
    "imagenet-v2's folders read as sorted strings": (
        'formats/imagenet.py', '        labels += [int(d) if by_index else index[d]] * len(images)',
        '        labels += [len(set(labels)) if by_index else index[d]] * len(images)', 'tests/test_imagenet.py'),
    'grad checkpointing not applied': ('backbones.py', '        model.set_grad_checkpointing(True)\n',
                                       '        pass\n', 'tests/test_checkpointing.py'),
    'grad checkpointing reentrant (deep prompts lose their gradient)': (
        'backbones.py', '        model.set_grad_checkpointing(True)\n',
        '        __import__("timm.layers").layers.set_reentrant_ckpt(True)\n        model.set_grad_checkpointing(True)\n',
        'tests/test_checkpointing.py'),
    'fgvc merges train and val by default': ('flags.py', "a.splits = 'tune' if a.dataset.startswith('fgvc:') else 'final'",
                                             "a.splits = 'final'", 'tests/test_own_data.py -k fgvc_runs'),
    'a preempted job is not requeued': ('tools/cluster.py',
                                        '        return DelayedSubmission(replace(self))', '        return None',
                                        'tests/test_cluster.py -k preempted'),
    'a job starts its run afresh, not from its checkpoint': (
        'tools/cluster.py', "    if all(os.path.exists(os.path.join(out, f)) for f in ('config.json', 'checkpoint.pt')):",
        '    if False:', 'tests/test_cluster.py -k preempted'),
    'a queued job submitted again': ('tools/cluster.py', "        if record and record['launcher'] == self.kind and "
                                     "in_flight(record):", '        if False:', 'tests/test_cluster.py -k slurm_jobs'),
    "a job's cpus not asked of slurm": ('tools/cluster.py', '                             cpus_per_task=self.cpus, ',
                                        '                             ', 'tests/test_cluster.py -k slurm_jobs'),
    'submitit imported by every comparison': ('tools/cluster.py', 'from flags import NONNEG_INT, POS_INT\n',
                                              'import submitit\nfrom flags import NONNEG_INT, POS_INT\n',
                                              'tests/test_cluster.py -k imported_only'),
    "a protocol's run known by how it runs": ('tools/protocols.py',
                                              '''    return re.sub(f' (?:{"|".join(HOW)})(?= --|$)', '', command)''',
                                              '    return command', 'tests/test_checkpointing.py -k protocols_runs'),
    'a resumed run forgets how it ran': ('tools/cluster.py', ", *[f for f in argv if f in HOW]]", "]",
                                         'tests/test_checkpointing.py -k protocols_runs'),
    'vpt-deep ignores grad checkpointing': ('baselines.py', 'if vit.grad_checkpointing else block(x)',
                                            'if False else block(x)', 'tests/test_checkpointing.py'),
    'a run identity that ignores the data': ('flags.py', 'tag = hashlib.sha256((settings(a) + data).encode())',
                                             'tag = hashlib.sha256(settings(a).encode())',
                                             'tests/test_run_identity.py -k other_data'),
    'a finished run on other data reported': ('train.py', "    if config is not None and config.get('data') not in (",
                                              "    if False and config.get('data') not in (",
                                              'tests/test_run_identity.py -k other_data'),
    'a comparison reads back a run made on other data': (
        'tools/compare.py', "    other_data = lambda made: not report and made.get('data') not in (None, data_of(job))",
        '    other_data = lambda made: False', 'tests/test_run_identity.py -k comparison'),
    'flags that change nothing said nothing': ('train.py', '    if not_used(a, argv, config):', '    if False:',
                                               'tests/test_run_identity.py -k change_nothing'),
    'a warmup longer than the run accepted': ('flags.py', '    if a.warmup_epochs is not None and a.warmup_epochs > a.epochs:',
                                              '    if False:', 'tests/test_run_identity.py -k warmups'),
    'lorsp without a leak accepted': ('lorsp.py', '        if not tau > 1:', '        if not tau >= 1:',
                                      'tests/test_run_identity.py -k leak'),
    'an 8-bit mode I image read as 16-bit': ('formats/images.py', "white = 255 if mode == 'I' and x.max() <= 255 else 65535",
                                             'white = 65535', 'tests/test_run_identity.py -k 32_bit'),
    'class folders matched letter by letter': ('data.py', "    found = {c: label.get(unicodedata.normalize('NFC', c))",
                                               "    found = {c: label.get(c)", 'tests/test_run_identity.py -k unicode'),
    'a job requeued twice': ('tools/cluster.py', '            signal.signal(signal.SIGUSR2, signal.SIG_IGN)\n            requeue',
                             '            requeue', 'tests/test_cluster.py -k whichever'),
    'train.py not passing the warning on': ('tools/job.py', '    signal.signal(signal.SIGUSR2, warn_the_job)\n',
                                            '', 'tests/test_cluster.py -k whichever'),
    'a job of sbatch\'s refusal stops the comparison': ('tools/cluster.py', '        except Exception as e:  # sbatch refused',
                                                       '        except ImportError as e:  # sbatch refused',
                                                       'tests/test_cluster.py -k refuses'),
    'a later start decodes every image again': ('formats/images.py', '            stamps, known = self.stamps(indices), record.read()',
                                                '            stamps, known = self.stamps(indices), {}',
                                                'tests/test_scale.py -k later_start'),
    'a changed image of the same size not checked again': (
        'formats/images.py', '            out[self.name(i)] = (st.st_size, st.st_mtime_ns)',
        '            out[self.name(i)] = (st.st_size, 0)', 'tests/test_scale.py -k later_start'),
    'every process checks every image': ('formats/images.py', '        parts = gather(self._decode_all(todo[rank::size]))',
                                         '        parts = gather(self._decode_all(todo))',
                                         'tests/test_scale.py -k torchrun'),
    'jpegs decoded by pil alone': ('formats/images.py', '    if jpeg and not large:', '    if False:',
                                   'tests/test_scale.py -k jpeg'),
    'a planar copy before the resize': ('formats/images.py',
                                        "    return torch.from_numpy(np.array(image.convert('RGB'))).permute(2, 0, 1)  #",
                                        "    return torch.from_numpy(np.array(image.convert('RGB'))).permute(2, 0, 1).contiguous()  #",
                                        'tests/test_scale.py -k jpeg'),
    'a large jpeg decoded below twice the run size': ('formats/images.py', "image.draft('RGB', (2 * size, 2 * size))",
                                                      "image.draft('RGB', (size, size))", 'tests/test_scale.py -k large'),
    'the test limit takes the first images': ('data.py', '    return sorted(order[((np.arange(n) + 0.5) * len(labels) / n).astype(int)].tolist())',
                                              '    return list(range(n))', 'tests/test_scale.py -k spans'),
    'train and val of one source checked apart': ('data.py', '    for source, indices in by_source.items():',
                                                  '    for source, indices in used:', 'tests/test_scale.py -k drawn_from_one'),
    'a resume without --out reads its data twice': ('train.py', '    splits = first if first and given.data_dir == a.data_dir else read_data(a, processes)',
                                                    '    splits = read_data(a, processes)', 'tests/test_first_hour.py -k advice'),
    'the core imports a tool': ('runs.py', 'from methods import trainable_state\n',
                                'from methods import trainable_state\nimport tools.figures  # noqa\n',
                                'tests/test_layout.py'),
    'the loop names a method': ('train.py', '        loop.after_backward()  # methods\' hooks',
                                "        loop.after_backward() if a.optimizer == 'evp' else None  # methods' hooks",
                                'tests/test_layout.py'),
    'the recipe\'s prompt a (C, 1, 1) that only broadcasts': ('docs/new_method.md',
                                                             '        return self.b.expand(-1, self.H, self.W)',
                                                             '        return self.b', 'tests/test_first_hour.py -k recipe'),
    'the start line counts the whole model as the head': ('runs.py', 'for p in model.head.parameters() if p.requires_grad',
                                                          'for p in model.parameters() if p.requires_grad',
                                                          'tests/test_first_hour.py -k recipe'),
    'the device decoder not reported': ('tools/bench_loader.py', '        if b.device_decode:', '        if False:',
                                        'tests/test_scale.py -k bench_loader'),
    'a train.py ended alone taken for the job\'s end': ('tools/cluster.py',
                                                       '        if self.ended and returncode == -signal.SIGTERM:',
                                                       '        if returncode == -signal.SIGTERM:',
                                                       'tests/test_cluster.py -k slurm_ends'),
    'the job\'s SIGTERM not remembered': ('tools/cluster.py', '            self.ended = True\n', '            pass\n',
                                          'tests/test_cluster.py -k slurm_ends'),
    'damaged images: the others forgotten': ('formats/images.py', '            if new:\n', '            if new and not failed:\n',
                                              'tests/test_scale.py -k damaged'),
    'offline advice for a damaged file': ('train.py', '(backbones.online() or not isinstance(e, data.NeedsNetwork))',
                                          'backbones.online()', 'tests/test_scale.py -k truncated'),
    'workers not shared by torchrun\'s processes': ('flags.py', "cpus // int(os.environ.get('LOCAL_WORLD_SIZE', '1'))",
                                                    'cpus', 'tests/test_first_hour.py -k default_workers'),
    'the test sets scored on the login node': ('tools/cluster.py', '        if returncode == 0 and self.test_sets:',
                                               '        if False:', 'tests/test_imagenet.py -k cluster_launcher'),
    'a start that checks images says nothing': ('formats/images.py', '            if todo:\n                n = len(todo)',
                                                '            if False:\n                n = len(todo)',
                                                'tests/test_scale.py -k later_start'),
}


def plant(name, file, before, after, tests):
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, 'repo')
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns('runs', 'results', '.git', '__pycache__'))
        path = os.path.join(copy, file)
        text = open(path).read()
        if text.count(before) != 1:
            return f'NOT PLANTED (the line is there {text.count(before)} times)'
        open(path, 'w').write(text.replace(before, after))
        # ../shared beside the copy, as beside the repository
        os.symlink(os.path.join(os.path.dirname(ROOT), 'shared'), os.path.join(tmp, 'shared'))
        tier = [] if FAST else ['--e2e']  # the fast tier alone, or both tiers
        p = subprocess.run([sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider', *tier, *tests.split()],
                           cwd=copy, capture_output=True, text=True)
        return 'caught' if p.returncode != 0 else 'MISSED: the tests pass with the bug'


def main(argv):
    global FAST
    FAST = '--fast' in argv
    argv = [a for a in argv if a != '--fast']
    chosen = {k: v for k, v in BUGS.items() if not argv or any(a in k for a in argv)}
    results = {}
    for name, spec in chosen.items():
        results[name] = plant(name, *spec)
        print(f'{name:<45} {results[name]}', flush=True)
    print(f'{sum(r == "caught" for r in results.values())} of {len(results)} planted bugs caught'
          f'{" by the fast tier alone" if FAST else ""}')
    return 0 if all(r == 'caught' for r in results.values()) else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
