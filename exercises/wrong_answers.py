"""
Plausible wrong answers to the Build exercises, and proof that each one's check catches them.

    python exercises/wrong_answers.py            # all (several minutes)
    python exercises/wrong_answers.py 13 15      # only these exercises

Each wrong answer is one small edit: for 12-16 of the code as it stands (its solution), for 17-19 of the code with
the teacher's solution applied (exercises/solutions/). Each is made in a scratch copy, the exercise's check is run
there, and a line says whether it failed, as it should. A teacher can read the list for the mistakes to expect.
"""
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = {12: 'tests/test_model.py -k top_k', 13: 'tests/test_model.py -k cache', 14: 'tests/test_model.py -k patch_embed',
          15: 'tests/test_model.py -k batchnorm', 16: 'tests/test_model.py -k flops', 17: 'exercises/check_place_facts.py',
          18: 'exercises/check_new_kind.py', 19: 'exercises/check_cross_attention.py'}
SOLUTIONS = {17: '17-place-facts.patch', 18: '18-new-kind.patch', 19: '19-cross-attention.patch'}
TOP_K = "                    logits = logits.masked_fill(logits < kth, -float('inf'))\n"
KTH = "kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]"
CAUSAL = "causal = self.causal and q.size(2) == k.size(2)"
START = "start=prefix.size(1) + idx.size(1) - 1)"
FLAT = "x = x.flatten(2).transpose(1, 2)  # (B, N, C)"
WEIGHT = "weight = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum"
NEAR = "            near = [n for n in named if n[0] < i][-1:] or [n for n in named if n[0] > i][:1]"

WRONG = [  # (exercise, what, file, this, becomes this)
    (12, 'no top-k at all', 'model.py', TOP_K, ''),
    (12, '<= masks the k-th too', 'model.py', 'logits < kth,', 'logits <= kth,'),
    (12, 'the k least likely', 'model.py', KTH, KTH.replace('logits.size(-1)))', 'logits.size(-1)), largest=False)')),
    (12, 'uniform among the k', 'model.py', TOP_K, TOP_K.replace('logits.masked_fill', 'torch.zeros_like(logits).masked_fill')),
    (12, 'the masked logits not used', 'model.py', TOP_K, TOP_K.replace('logits = ', 'masked = ')),
    (12, 'top_k=0 taken as k=0', 'model.py', '                if top_k:\n', '                if top_k is not None:\n'),
    (12, "the first row's k-th for every row", 'model.py', '.values[:, -1:]', '.values[:1, -1:]'),
    (13, 'the prefill without the causal mask', 'model.py', CAUSAL, 'causal = self.causal and cache is None'),
    (13, 'the causal mask on one-token steps too', 'model.py', CAUSAL, 'causal = self.causal'),
    (13, 'no position offset', 'model.py', START, 'start=idx.size(1) - 1)'),
    (13, 'the position off by one', 'model.py', START, 'start=prefix.size(1) + idx.size(1))'),
    (13, 'new keys never stored', 'model.py', "            cache['k'], cache['v'] = k, v\n",
     "            else:\n                cache['k'], cache['v'] = k, v\n"),
    (13, 'the prefix sent again at every step', 'model.py', 'h = self.decode(None, nxt[:, None], caches,',
     'h = self.decode(prefix, nxt[:, None], caches,'),
    (14, 'patches column by column', 'model.py', FLAT, FLAT.replace('x.flatten(2)', 'x.transpose(2, 3).flatten(2)')),
    (14, 'a reshape instead of the transpose', 'model.py', FLAT, 'x = x.flatten(2).reshape(x.size(0), -1, x.size(1))'),
    (14, 'no ReLU between the convolutions', 'model.py', 'self.conv2(F.relu(self.conv1(pixels)))', 'self.conv2(self.conv1(pixels))'),
    (14, 'the ReLU before the LayerNorm', 'model.py', 'self.fc(F.relu(self.ln(x)))', 'self.fc(self.ln(F.relu(x)))'),
    (14, 'no linear layer', 'model.py', 'return self.fc(F.relu(self.ln(x)))', 'return F.relu(self.ln(x))'),
    (15, 'a biased running variance', 'model.py', 'lerp_(var * n / (n - 1), weight)', 'lerp_(var, weight)'),
    (15, 'normalised by the unbiased variance', 'model.py', 'torch.rsqrt(var + self.eps)).view_as',
     'torch.rsqrt(var * n / (n - 1) + self.eps)).view_as'),
    (15, 'the momentum the wrong way round', 'model.py', WEIGHT, WEIGHT.replace('else self.momentum', 'else 1 - self.momentum')),
    (15, 'momentum None taken as 0.1', 'model.py', WEIGHT, 'weight = self.momentum or 0.1'),
    (15, 'statistics of each picture alone', 'model.py', '        return ((flat - mean) * torch.rsqrt(var + self.eps))',
     '        return (x - x.mean(1, keepdim=True)) * torch.rsqrt(x.var(1, unbiased=False, keepdim=True) + self.eps)\n'
     '        return ((flat - mean) * torch.rsqrt(var + self.eps))'),
    (15, 'no gradient through the statistics', 'model.py', '        var = global_sum(((flat - mean) ** 2)',
     '        mean = mean.detach()\n        var = global_sum(((flat - mean) ** 2)'),
    (15, 'a one-pass variance, E[x^2] - E[x]^2', 'model.py', 'var = global_sum(((flat - mean) ** 2).sum(0)) / n',
     'var = global_sum((flat ** 2).sum(0)) / n - mean ** 2'),
    (15, 'the batch in eval mode too', 'model.py', '        if not self.training:\n', '        if False:\n'),
    (15, 'the running mean never updated', 'model.py', '            self.running_mean.lerp_(mean, weight)\n', ''),
    (16, 'attention not counted', 'model.py', ' + 2 * 2 * tokens * tokens * width)', ')'),
    (16, 'multiply-adds, not FLOPs', 'model.py', '        return 3 * forward\n', '        return 3 * forward // 2\n'),
    (16, 'no backward pass', 'model.py', '        return 3 * forward\n', '        return forward\n'),
    (16, 'the head over the prefix too', 'model.py', '2 * C * c.vocab_size * text_len', '2 * C * c.vocab_size * S'),
    (17, 'no place read before its object ("On the left, there is ...")', 'picturebook.py',
     'if spots and not named and set(words) <= WHERE_ONLY else []', 'if False else []'),
    (17, 'the place of the first object in the clause', 'picturebook.py', NEAR, '            near = named[:1]'),
    (17, 'the place of every object in the clause', 'picturebook.py', NEAR, '            near = named'),
    (17, "a clause's place carried to the next whatever it says", 'picturebook.py',
     'if spots and not named and set(words) <= WHERE_ONLY else []', 'if spots and not named else []'),
    (17, 'places read across commas', 'picturebook.py', "    for clause in re.split(r'[.!?;:,]', text.lower()):",
     "    for clause in re.split(r'[.!?;:]', text.lower()):"),
    (17, 'true_of blind to the colour', 'picturebook.py', "(o['where'], o['color'], o['kind']) == fact[1:]",
     "(o['where'], o['kind']) == (fact[1], fact[3])"),
    (18, 'the boat drawn as a ball', 'picturebook.py', "'boat': draw_boat,", "'boat': draw_ball,"),
    (18, 'a white hull whatever its colour', 'picturebook.py', '(cx - h / 3, by)], fill=c,', '(cx - h / 3, by)], fill=(250, 250, 250),'),
    (18, 'no wishes', 'picturebook.py', "    'boat': ['{T} wants to sail away.',", "    'boat_': ['{T} wants to sail away.',"),
    (18, 'drawn a quarter of its size', 'picturebook.py', "a white sail, a mast\n", "a white sail, a mast\n    h = h / 4\n"),
    (19, 'the picture never reaches the text', 'model.py', 'k, v = self.kv(visual)', 'k, v = self.kv(torch.zeros_like(visual))'),
    (19, 'the prefix kept as well', 'model.py', 'if prefix is not None and visual is None:', 'if prefix is not None:'),
    (19, 'the generation offset still counts the prefix', 'model.py', 'start=self.n_prefix + idx.size(1) - 1)', START),
    (19, "the picture's keys not kept in the cache", 'model.py', "if cache is not None and 'visual_k' in cache:", 'if False:'),
    (19, 'the text self-attention not causal', 'model.py', 'SelfAttention(n_embd, n_head, dropout, causal)\n',
     'SelfAttention(n_embd, n_head, dropout, causal and not cross)\n'),
]


def copy_of_repository(dest):
    for name in os.listdir(ROOT):
        if name.endswith('.py'):
            shutil.copy(os.path.join(ROOT, name), dest)
    for folder in ('tests', 'exercises'):
        shutil.copytree(os.path.join(ROOT, folder), os.path.join(dest, folder),
                        ignore=shutil.ignore_patterns('__pycache__', '.pytest_cache'))


def main(only):
    caught = 0
    wrong = [w for w in WRONG if not only or w[0] in only]
    for exercise, what, file, this, becomes in wrong:
        with tempfile.TemporaryDirectory() as d:
            copy_of_repository(d)
            if exercise in SOLUTIONS:
                subprocess.run(['git', 'apply', os.path.join('exercises', 'solutions', SOLUTIONS[exercise])], cwd=d, check=True)
            path = os.path.join(d, file)
            with open(path) as f:
                source = f.read()
            assert source.count(this) == 1, f'{exercise} {what}: the code to change is not there once; update this list'
            with open(path, 'w') as f:
                f.write(source.replace(this, becomes))
            p = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider', *CHECKS[exercise].split()],
                               cwd=d, capture_output=True, text=True)
        caught += p.returncode == 1
        last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr.strip()[-200:]
        print(f"{exercise} {what}: {'caught' if p.returncode == 1 else 'NOT CAUGHT'} ({last})", flush=True)
    print(f'{caught} of {len(wrong)} wrong answers caught')
    return caught == len(wrong)


if __name__ == '__main__':
    sys.exit(0 if main({int(a) for a in sys.argv[1:]}) else 1)
