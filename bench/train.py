"""Training speed of pictaxon.train against a plain torch loop, and wall time to the target accuracy.

  1. images/s of one fastai training epoch (the unfrozen phase of fine_tune: the whole network trains) vs a
     plain torch training loop (torchvision-style transforms, AdamW, cross-entropy) on the same network,
     the same photos and the same batch size. Only the training passes are timed, not validation.
  2. wall time from nothing to >= 97% valid accuracy with the default recipe (fine_tune, one frozen epoch
     first), on the shared bear photos.

Usage: .venv/bin/python bench/train.py [--threads 1] [--batch-size 32] [--size 224]
"""
import argparse, json, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEARS = ROOT.parent / 'shared' / 'datasets' / 'bears'


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset', default=str(BEARS))
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads for both contenders (default 1: steady numbers on shared cores)')
    parser.add_argument('--target', type=float, default=0.97)
    parser.add_argument('--max-epochs', type=int, default=4)
    args = parser.parse_args()

    import torch
    from torch import nn
    from fastai.vision.all import Callback
    from pictaxon.train import make_dataloaders, create_learner, train
    torch.set_num_threads(args.threads)
    print(f'dataset {args.dataset}, size {args.size}, batch size {args.batch_size}, torch threads {args.threads}')

    # 1a. fastai: one unfrozen epoch, training passes timed by a callback
    class TrainTimer(Callback):
        def before_train(self): self.start = time.perf_counter()
        def after_train(self): self.seconds = time.perf_counter() - self.start
    dls = make_dataloaders(args.dataset, size=args.size, batch_size=args.batch_size)
    learn = create_learner(dls)
    learn.unfreeze()
    timer = TrainTimer()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-3, cbs=[timer])
    n_seen = len(dls.train) * args.batch_size          # fastai drops the last partial training batch
    fastai_rate = n_seen / timer.seconds
    print(f'\n1. one training epoch, whole network')
    print(f'   fastai (pictaxon.train)   {fastai_rate:7.2f} images/s  ({n_seen} images in {timer.seconds:.0f} s)')

    # 1b. plain torch on the same network (a fresh copy), photos, split and batch size
    from PIL import Image
    from torchvision import transforms as T
    from pictaxon.images import open_image
    from pictaxon.train import LITE_STATS, presize
    plain_net = create_learner(make_dataloaders(args.dataset, size=args.size, batch_size=args.batch_size)).model
    plain_net.train()
    for p in plain_net.parameters(): p.requires_grad_(True)
    tfm = T.Compose([T.Resize(presize(args.size)), T.CenterCrop(presize(args.size)),
                     T.RandomResizedCrop(args.size, scale=(0.75, 1.0), ratio=(1, 1)), T.RandomHorizontalFlip(),
                     T.ColorJitter(brightness=0.2), T.ToTensor(), T.Normalize(*LITE_STATS)])
    classes = list(dls.vocab)
    items = [(Path(f), classes.index(Path(f).parent.name)) for f in dls.train_ds.items]
    class Photos(torch.utils.data.Dataset):
        def __len__(self): return len(items)
        def __getitem__(self, i): return tfm(open_image(items[i][0])), items[i][1]
    loader = torch.utils.data.DataLoader(Photos(), batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=0)
    optimiser = torch.optim.AdamW(plain_net.parameters(), lr=1e-3, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    start, seen = time.perf_counter(), 0
    for x, y in loader:
        optimiser.zero_grad()
        loss_fn(plain_net(x), y).backward()
        optimiser.step()
        seen += len(y)
    plain_seconds = time.perf_counter() - start
    plain_rate = seen / plain_seconds
    print(f'   plain torch loop          {plain_rate:7.2f} images/s  ({seen} images in {plain_seconds:.0f} s)')
    print(f'   -> fastai / plain = {fastai_rate / plain_rate:.2f}x')

    # 2. wall time to the target accuracy with the default recipe
    print(f'\n2. time to {args.target:.0%} valid accuracy (default recipe, fine_tune: 1 frozen epoch, then unfrozen)')
    start = time.perf_counter()
    learn = train(args.dataset, epochs=args.max_epochs, size=args.size, batch_size=args.batch_size, progress=False)
    total = time.perf_counter() - start
    reached = next((e for e in learn.training_history.epochs if e.get('accuracy', 0) >= args.target), None)
    for e in learn.training_history.epochs:
        print(f"   epoch {e['epoch']}  {e['seconds']:6.0f} s  valid accuracy {e.get('accuracy', float('nan')):.3f}")
    if reached: print(f"   -> {args.target:.0%} reached after epoch {reached['epoch']} at {reached['seconds']:.0f} s "
                      f"(whole run {total:.0f} s, final {learn.evaluation.accuracy:.1%})")
    else: print(f'   -> {args.target:.0%} not reached in {args.max_epochs + 1} epochs ({total:.0f} s)')
    results = {'fastai_images_per_s': round(fastai_rate, 3), 'plain_images_per_s': round(plain_rate, 3),
               'fastai_over_plain': round(fastai_rate / plain_rate, 3), 'threads': args.threads,
               'seconds_to_target': reached and reached['seconds'], 'target': args.target,
               'history': learn.training_history.epochs, 'final_accuracy': learn.evaluation.accuracy}
    out_dir = ROOT / 'bench' / 'out'
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / 'train.json').write_text(json.dumps(results, indent=2) + '\n')
    print(f'\nwrote {out_dir / "train.json"}')


if __name__ == '__main__':
    main()
