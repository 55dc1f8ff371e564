// twokey's only script. Every page works without it; it adds a live countdown to open
// access windows and narrows the operation list to the chosen vault's kind.
'use strict';

function pad(n) { return String(n).padStart(2, '0'); }

function tick() {
  for (const el of document.querySelectorAll('.countdown[data-until]')) {
    const left = Math.floor((Date.parse(el.dataset.until) - Date.now()) / 1000);
    if (Number.isNaN(left)) continue;
    if (left <= 0) { el.textContent = 'ending now'; continue; }
    const h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
    el.textContent = (h > 0 ? h + ':' + pad(m) : m) + ':' + pad(s) + ' left';
  }
}

function vaultKind(id) {
  if (/\/providers\/microsoft\.recoveryservices\/vaults\//i.test(id)) return 'recovery_services';
  if (/\/providers\/microsoft\.dataprotection\/backupvaults\//i.test(id)) return 'backup';
  return '';
}

function filterOperations() {
  const select = document.getElementById('vault_id');
  const text = document.getElementById('vault_id_text');
  if (!select || !text) return;
  const kind = vaultKind(text.value.trim() || select.value);
  for (const group of document.querySelectorAll('.ops[data-kind]')) {
    group.hidden = kind !== '' && group.dataset.kind !== kind;
  }
}

document.addEventListener('DOMContentLoaded', () => {
  tick();
  if (document.querySelector('.countdown[data-until]')) setInterval(tick, 1000);
  for (const id of ['vault_id', 'vault_id_text']) {
    const el = document.getElementById(id);
    if (el) { el.addEventListener('input', filterOperations); el.addEventListener('change', filterOperations); }
  }
  filterOperations();
});
