// CartWise kiosk page: take and return a cart, Hebrew (RTL) first, English on a switch.
// Plain ES2020, no framework, no build step, no external assets. It calls the existing
// kiosk API at the root of the edge's HTTP server (see DESIGN.md) and polls /health.
'use strict';

(() => {
  // ---------------------------------------------------------------- configuration

  /** Prefix of every API path ('' = the root of this server). */
  const API_BASE = '';
  const HEALTH_EVERY_MS = 5000;
  const HEALTH_TIMEOUT_MS = 4000;
  const REQUEST_TIMEOUT_MS = 15000;
  /** Assign records the rental, unlocks and verifies the hook: allow it longer. */
  const ASSIGN_TIMEOUT_MS = 45000;
  const RETURN_POLL_MS = 1500;
  const RETURN_POLL_TIMEOUT_MS = 10000;
  const RETURN_GIVE_UP_MS = 5 * 60 * 1000;
  const IDLE_HOME_MS = 60000;
  const TAKEN_HOME_MS = 20000;
  const RETURNED_HOME_MS = 15000;
  const RESEND_AFTER_S = 30;
  const PHONE_DIGITS = 10;
  const CODE_DIGITS = 4;
  const LANG_KEY = 'cartwise.kiosk.lang';
  const TOKENS_KEY = 'cartwise.kiosk.tokens';
  const MAX_SAVED_TOKENS = 500;
  const DAY_MS = 24 * 60 * 60 * 1000;

  // ---------------------------------------------------------------- strings

  const STRINGS = {
    he: {
      langToggle: 'English',
      statusConnected: 'מחובר',
      statusOffline: 'מצב לא מקוון — העגלות ממשיכות לעבוד',
      statusUnreachable: 'הקיוסק אינו מצליח להתחבר לתחנת העגלות',
      lockFault: 'תקלה במערכת הנעילה — נא לקרוא לצוות',
      homeTitle: 'ברוכים הבאים',
      homeSub: 'השכרת עגלות קניות — מהירה ופשוטה',
      take: 'קח עגלה',
      takeSub: 'עם מספר הטלפון הנייד שלך',
      return: 'החזר עגלה',
      returnSub: 'לכל עמדה פנויה',
      flowTake: 'לקיחת עגלה',
      flowReturn: 'החזרת עגלה',
      phoneTitle: 'מה מספר הטלפון הנייד שלך?',
      phoneHintTake: 'נשלח אליך קוד אימות ב-SMS',
      phoneHintReturn: 'המספר שאיתו לקחת את העגלה',
      phonePrefixHint: 'מספר נייד ישראלי מתחיל ב-05',
      phoneIncomplete: 'יש להזין מספר בן 10 ספרות, למשל 0501234567',
      codeTitle: 'הזינו את הקוד שקיבלתם ב-SMS',
      codeSentTo: 'הקוד נשלח למספר {phone}',
      codeIncomplete: 'הקוד כולל 4 ספרות',
      continue: 'המשך',
      confirm: 'אישור',
      cancel: 'ביטול',
      changePhone: 'שינוי מספר',
      resend: 'שלחו לי קוד חדש',
      resendIn: 'קוד חדש בעוד {s} שניות',
      keyClear: 'נקה',
      keyBack: 'מחק ספרה',
      busySending: 'שולחים קוד אימות…',
      busyChecking: 'בודקים את הקוד…',
      busyUnlocking: 'משחררים עבורך עגלה…',
      busyFinding: 'מחפשים עמדה פנויה…',
      takenLabel: 'קח את עגלה מספר',
      takenReturnBy: 'יש להחזיר עד השעה {time}',
      takenReturnByDay: 'יש להחזיר עד {date} בשעה {time}',
      takenHint: 'העמדה שוחררה — משכו את העגלה החוצה',
      dockLabel: 'החזירו את העגלה לעמדה מספר',
      dockHint: 'דחפו את העגלה פנימה עד שהמנעול נסגר',
      dockWaiting: 'ממתינים לעגלה…',
      dockTrouble: 'בעיית תקשורת רגעית — ממשיכים לנסות',
      dockTimeout: 'לא זיהינו עגלה בעמדה {post}. נסו שוב או פנו לצוות הסניף.',
      returnedTitle: 'תודה! העגלה הוחזרה',
      returnedSub: 'נשמח לראותכם שוב',
      done: 'סיום',
      countdown: 'חזרה למסך הראשי בעוד {s} שניות',
      errorTitle: 'לא הצלחנו להשלים את הפעולה',
      tryAgain: 'נסו שוב',
      backHome: 'חזרה למסך הראשי',
      errNetwork: 'אין תקשורת עם תחנת העגלות. נסו שוב בעוד רגע.',
      errTimeout: 'תחנת העגלות לא ענתה בזמן. נסו שוב בעוד רגע.',
      errAssignUnknown: 'תחנת העגלות לא אישרה את הבקשה. אם נפתחה עמדה — קחו ממנה את העגלה; אחרת נסו שוב או פנו לצוות.',
      errHttp: 'אירעה שגיאה (קוד {status}). נסו שוב או פנו לצוות הסניף.',
      errBadReply: 'התקבלה תשובה לא צפויה מתחנת העגלות. פנו לצוות הסניף.',
    },
    en: {
      langToggle: 'עברית',
      statusConnected: 'Connected',
      statusOffline: 'Offline mode — carts still work',
      statusUnreachable: 'Kiosk cannot reach the cart station',
      lockFault: 'Lock system fault — please call staff',
      homeTitle: 'Welcome',
      homeSub: 'Shopping cart rental — quick and simple',
      take: 'Take a cart',
      takeSub: 'With your mobile phone number',
      return: 'Return a cart',
      returnSub: 'At any free post',
      flowTake: 'Take a cart',
      flowReturn: 'Return a cart',
      phoneTitle: 'What is your mobile number?',
      phoneHintTake: 'We will text you a verification code',
      phoneHintReturn: 'The number you took the cart with',
      phonePrefixHint: 'Israeli mobile numbers start with 05',
      phoneIncomplete: 'Please enter all 10 digits, e.g. 0501234567',
      codeTitle: 'Enter the code we texted you',
      codeSentTo: 'The code was sent to {phone}',
      codeIncomplete: 'The code has 4 digits',
      continue: 'Continue',
      confirm: 'Confirm',
      cancel: 'Cancel',
      changePhone: 'Change number',
      resend: 'Send me a new code',
      resendIn: 'New code in {s} s',
      keyClear: 'Clear',
      keyBack: 'Delete digit',
      busySending: 'Sending your code…',
      busyChecking: 'Checking the code…',
      busyUnlocking: 'Unlocking a cart for you…',
      busyFinding: 'Finding a free post…',
      takenLabel: 'Take cart number',
      takenReturnBy: 'Please return it by {time}',
      takenReturnByDay: 'Please return it by {time} on {date}',
      takenHint: 'The post is unlocked — pull the cart out',
      dockLabel: 'Dock the cart at post',
      dockHint: 'Push the cart in until the lock closes',
      dockWaiting: 'Waiting for the cart…',
      dockTrouble: 'Connection hiccup — still trying',
      dockTimeout: 'We did not detect a cart at post {post}. Please try again or ask the staff for help.',
      returnedTitle: 'Thank you! The cart is returned',
      returnedSub: 'See you next time',
      done: 'Done',
      countdown: 'Back to the start in {s} s',
      errorTitle: 'We could not complete that',
      tryAgain: 'Try again',
      backHome: 'Back to the start',
      errNetwork: 'Cannot reach the cart station. Please try again in a moment.',
      errTimeout: 'The cart station did not answer in time. Please try again in a moment.',
      errAssignUnknown: 'The cart station did not confirm. If a post unlocked, take the cart from it; otherwise try again or ask the staff.',
      errHttp: 'Something went wrong (code {status}). Please try again or ask the staff.',
      errBadReply: 'The cart station sent an unexpected answer. Please ask the staff.',
    },
  };

  // ---------------------------------------------------------------- small helpers

  const $ = (sel, root = document) => root.querySelector(sel);
  const byTestId = (id) => $(`[data-testid="${id}"]`);

  function storageGet(key) {
    try { return window.localStorage.getItem(key); } catch (_) { return null; }
  }
  function storageSet(key, value) {
    try { window.localStorage.setItem(key, value); } catch (_) { /* storage full or disabled */ }
  }

  function t(key, vars) {
    const table = STRINGS[state.lang] || STRINGS.he;
    let text = table[key] ?? STRINGS.he[key] ?? key;
    if (vars) {
      for (const [name, value] of Object.entries(vars)) text = text.split(`{${name}}`).join(String(value));
    }
    return text;
  }

  function formatPhone(digits) {
    return digits.length > 3 ? `${digits.slice(0, 3)}-${digits.slice(3)}` : digits;
  }

  // ---------------------------------------------------------------- state

  const initialLang = storageGet(LANG_KEY) === 'en' ? 'en' : 'he';

  const state = {
    lang: initialLang,
    screen: 'home',
    /** 'take' | 'return' while a flow runs. */
    flow: null,
    /** 'phone' | 'code' on the entry screen. */
    mode: 'phone',
    phone: '',
    code: '',
    /** Bumped on every new flow and on going home: late answers of an old flow are ignored. */
    gen: 0,
    entryError: '',
    otpMessage: '',
    otpMessageLang: '',
    resendAt: 0,
    busyKey: 'busySending',
    cartNumber: null,
    expectedReturn: null,
    returnPost: null,
    dockNote: false,
    errorText: '',
    errorRetry: null,
    autoHomeAt: 0,
    lastActivity: Date.now(),
    health: 'unknown',
    lockFault: false,
  };

  // ---------------------------------------------------------------- saved shopper tokens

  function loadTokens() {
    try {
      const parsed = JSON.parse(storageGet(TOKENS_KEY) || '{}');
      return parsed && typeof parsed === 'object' ? parsed : {};
    } catch (_) {
      return {};
    }
  }

  function saveTokens(tokens) {
    const now = Date.now();
    const live = Object.entries(tokens)
      .filter(([, v]) => v && typeof v.token === 'string' && v.expires > now)
      .sort((a, b) => b[1].saved - a[1].saved)
      .slice(0, MAX_SAVED_TOKENS);
    storageSet(TOKENS_KEY, JSON.stringify(Object.fromEntries(live)));
  }

  function getToken(phone) {
    const entry = loadTokens()[phone];
    return entry && typeof entry.token === 'string' && entry.expires > Date.now() ? entry.token : null;
  }

  function rememberToken(phone, token, days) {
    const tokens = loadTokens();
    const valid = Number.isFinite(days) && days > 0 ? days : 30;
    tokens[phone] = { token, saved: Date.now(), expires: Date.now() + valid * DAY_MS };
    saveTokens(tokens);
  }

  function forgetToken(phone) {
    const tokens = loadTokens();
    if (phone in tokens) {
      delete tokens[phone];
      saveTokens(tokens);
    }
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    /** kind: 'network' | 'timeout' | 'http' | 'reply' */
    constructor(kind, status, detail) {
      super(detail || kind);
      this.kind = kind;
      this.status = status;
      this.detail = detail;
    }
  }

  /** The text of an error body: `detail` (a string, or FastAPI's list of {msg}), else `message`. */
  function detailOf(body) {
    if (!body || typeof body !== 'object') return '';
    const d = body.detail;
    if (typeof d === 'string') return d;
    if (Array.isArray(d)) return d.map((x) => (x && typeof x.msg === 'string' ? x.msg : '')).filter(Boolean).join(' · ');
    if (typeof body.message === 'string') return body.message;
    return '';
  }

  async function api(method, path, body, { token = null, timeout = REQUEST_TIMEOUT_MS } = {}) {
    const headers = { Accept: 'application/json', 'Accept-Language': state.lang };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (token) headers.Authorization = `Bearer ${token}`;
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), timeout);
    try {
      let res;
      try {
        res = await fetch(API_BASE + path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          cache: 'no-store',
          signal: ctrl.signal,
        });
      } catch (_) {
        throw new ApiError(ctrl.signal.aborted ? 'timeout' : 'network', 0, '');
      }
      let data = null;
      try {
        const text = await res.text();
        data = text ? JSON.parse(text) : null;
      } catch (_) {
        if (ctrl.signal.aborted) throw new ApiError('timeout', res.status, '');
        data = null;
      }
      if (!res.ok) throw new ApiError('http', res.status, detailOf(data));
      if (!data || typeof data !== 'object') throw new ApiError('reply', res.status, '');
      return data;
    } finally {
      clearTimeout(timer);
    }
  }

  function errorText(err) {
    if (err instanceof ApiError) {
      if (err.detail) return err.detail;
      if (err.kind === 'network') return t('errNetwork');
      if (err.kind === 'timeout') return t('errTimeout');
      if (err.kind === 'reply') return t('errBadReply');
      return t('errHttp', { status: err.status });
    }
    return t('errBadReply');
  }

  // ---------------------------------------------------------------- rendering

  const screens = {};
  document.querySelectorAll('[data-screen]').forEach((el) => { screens[el.dataset.screen] = el; });

  function applyLanguage() {
    const root = document.documentElement;
    root.lang = state.lang;
    root.dir = state.lang === 'he' ? 'rtl' : 'ltr';
    document.querySelectorAll('[data-i18n]').forEach((el) => { el.textContent = t(el.dataset.i18n); });
    document.querySelectorAll('[data-i18n-aria]').forEach((el) => { el.setAttribute('aria-label', t(el.dataset.i18nAria)); });
    byTestId('lang-toggle').setAttribute('lang', state.lang === 'he' ? 'en' : 'he');
    render();
  }

  function show(name) {
    state.screen = name;
    for (const [key, el] of Object.entries(screens)) el.classList.toggle('active', key === name);
    render();
  }

  function setText(id, text) {
    const el = byTestId(id);
    if (el.textContent !== text) el.textContent = text;
  }

  function setHidden(id, hidden) {
    const el = byTestId(id);
    if (el.hidden !== hidden) el.hidden = hidden;
  }

  function secondsLeft(at) {
    return Math.max(0, Math.ceil((at - Date.now()) / 1000));
  }

  function renderEntry() {
    const phoneMode = state.mode === 'phone';
    const el = screens.entry;
    el.dataset.mode = state.mode;
    el.dataset.flow = state.flow || '';
    setText('flow-tag', state.flow === 'return' ? t('flowReturn') : t('flowTake'));
    setText('entry-title', phoneMode ? t('phoneTitle') : t('codeTitle'));
    let hint;
    if (phoneMode) hint = state.flow === 'return' ? t('phoneHintReturn') : t('phoneHintTake');
    else if (state.otpMessage && state.otpMessageLang === state.lang) hint = state.otpMessage;
    else hint = t('codeSentTo', { phone: formatPhone(state.phone) });
    setText('entry-hint', hint);

    // The display: typed digits strong, the rest of the 05X-XXXXXXX template faded.
    const display = byTestId('entry-display');
    display.classList.toggle('is-code', !phoneMode);
    const html = [];
    if (phoneMode) {
      const template = '05XXXXXXXX';
      for (let i = 0; i < PHONE_DIGITS; i += 1) {
        if (i === 3) html.push('<span class="sep">-</span>');
        const typed = i < state.phone.length;
        const cls = typed ? 'd typed' : (i === state.phone.length ? 'd next' : 'd');
        html.push(`<span class="${cls}">${typed ? state.phone[i] : template[i]}</span>`);
      }
      display.setAttribute('data-value', state.phone);
    } else {
      for (let i = 0; i < CODE_DIGITS; i += 1) {
        const typed = i < state.code.length;
        const cls = typed ? 'box typed' : (i === state.code.length ? 'box next' : 'box');
        html.push(`<span class="${cls}">${typed ? state.code[i] : ''}</span>`);
      }
      display.setAttribute('data-value', state.code);
    }
    const joined = html.join('');
    if (display.innerHTML !== joined) display.innerHTML = joined;

    setText('input-error', state.entryError);
    setHidden('input-error', !state.entryError);
    const badPrefix = phoneMode && !state.entryError && state.phone.length >= 2 && !state.phone.startsWith('05');
    setText('input-hint', badPrefix ? t('phonePrefixHint') : '');
    setHidden('input-hint', !badPrefix);

    const full = phoneMode ? state.phone.length === PHONE_DIGITS : state.code.length === CODE_DIGITS;
    const submit = byTestId('submit');
    setText('submit', phoneMode ? t('continue') : t('confirm'));
    submit.disabled = !full;

    setText('cancel', phoneMode ? t('cancel') : t('changePhone'));
    const resend = byTestId('resend');
    setHidden('resend', phoneMode);
    if (!phoneMode) {
      const wait = secondsLeft(state.resendAt);
      setText('resend', wait > 0 ? t('resendIn', { s: wait }) : t('resend'));
      resend.disabled = wait > 0;
    }
  }

  function formatReturnBy(iso) {
    if (typeof iso !== 'string' || !iso) return '';
    const when = new Date(iso);
    if (Number.isNaN(when.getTime())) return '';
    const locale = state.lang === 'he' ? 'he-IL' : 'en-GB';
    const time = when.toLocaleTimeString(locale, { hour: '2-digit', minute: '2-digit' });
    const sameDay = when.toDateString() === new Date().toDateString();
    if (sameDay) return t('takenReturnBy', { time });
    const date = when.toLocaleDateString(locale, { weekday: 'long', day: 'numeric', month: 'numeric' });
    return t('takenReturnByDay', { time, date });
  }

  function render() {
    switch (state.screen) {
      case 'entry':
        renderEntry();
        break;
      case 'busy':
        setText('busy-text', t(state.busyKey));
        break;
      case 'taken': {
        setText('cart-number', String(state.cartNumber));
        const by = formatReturnBy(state.expectedReturn);
        setText('return-by', by);
        setHidden('return-by', !by);
        setText('taken-countdown', t('countdown', { s: secondsLeft(state.autoHomeAt) }));
        break;
      }
      case 'dock':
        setText('return-post', String(state.returnPost));
        setText('dock-note', state.dockNote ? t('dockTrouble') : '');
        setHidden('dock-note', !state.dockNote);
        break;
      case 'returned':
        setText('returned-message', t('returnedSub'));
        setText('returned-countdown', t('countdown', { s: secondsLeft(state.autoHomeAt) }));
        break;
      case 'error':
        setText('error', typeof state.errorText === 'function' ? state.errorText() : state.errorText);
        setHidden('error-retry', !state.errorRetry);
        break;
      default:
        break;
    }
  }

  function renderStatus() {
    setHidden('status-connected', state.health !== 'connected');
    setHidden('status-offline', state.health !== 'offline');
    setHidden('status-unreachable', state.health !== 'unreachable');
    setHidden('status-lock-fault', !state.lockFault);
    document.body.dataset.health = state.health;
  }

  // ---------------------------------------------------------------- navigation

  function goHome() {
    state.gen += 1;
    state.flow = null;
    state.phone = '';
    state.code = '';
    state.entryError = '';
    state.autoHomeAt = 0;
    show('home');
  }

  function startFlow(flow) {
    state.gen += 1;
    state.flow = flow;
    state.phone = '';
    state.code = '';
    showEntry('phone', '');
  }

  function showEntry(mode, error) {
    state.mode = mode;
    state.entryError = error || '';
    state.lastActivity = Date.now();
    show('entry');
  }

  function showBusy(key) {
    state.busyKey = key;
    show('busy');
  }

  /** text: a string, or a function of the current language (our own messages re-translate). */
  function showError(text, retry) {
    state.errorText = text;
    state.errorRetry = retry || null;
    state.lastActivity = Date.now();
    show('error');
  }

  const isCurrent = (gen) => gen === state.gen;

  // ---------------------------------------------------------------- take flow

  async function requestOtp(useSavedToken) {
    const gen = state.gen;
    const phone = state.phone;
    const token = useSavedToken ? getToken(phone) : null;
    showBusy('busySending');
    let data;
    try {
      data = await api('POST', '/auth/request-otp', { phone }, { token });
    } catch (err) {
      if (!isCurrent(gen)) return;
      if (token && err.kind === 'http' && err.status === 401) {
        forgetToken(phone);
        requestOtp(false);
        return;
      }
      showEntry(state.mode, errorText(err));
      return;
    }
    if (!isCurrent(gen)) return;
    if (token && data.already_authenticated === true) {
      assign(token, true);
      return;
    }
    if (token) forgetToken(phone); // the server did not accept it
    state.otpMessage = typeof data.message === 'string' ? data.message : '';
    state.otpMessageLang = state.lang;
    state.code = '';
    state.resendAt = Date.now() + RESEND_AFTER_S * 1000;
    showEntry('code', '');
  }

  async function verifyOtp() {
    const gen = state.gen;
    const phone = state.phone;
    const code = state.code;
    showBusy('busyChecking');
    let data;
    try {
      data = await api('POST', '/auth/verify-otp', { phone, otp_code: code });
    } catch (err) {
      if (!isCurrent(gen)) return;
      state.code = '';
      showEntry('code', errorText(err));
      return;
    }
    if (!isCurrent(gen)) return;
    const token = typeof data.auth_token === 'string' && data.auth_token ? data.auth_token : null;
    if (token) rememberToken(phone, token, Number(data.token_expires_days));
    assign(token, false, code);
  }

  async function assign(token, savedToken, code) {
    const gen = state.gen;
    const phone = state.phone;
    showBusy('busyUnlocking');
    const body = { phone };
    if (!token && code) body.otp_code = code;
    let data;
    try {
      data = await api('POST', '/carts/assign', body, { token, timeout: ASSIGN_TIMEOUT_MS });
    } catch (err) {
      if (!isCurrent(gen)) return;
      if (savedToken && err.kind === 'http' && err.status === 401) {
        // The saved sign-in expired or was revoked: fall back to an SMS code.
        forgetToken(phone);
        requestOtp(false);
        return;
      }
      if (err.kind === 'network' || err.kind === 'timeout') {
        // The request may have reached the station: the outcome is unknown.
        showError(() => t('errAssignUnknown'), null);
      } else {
        showError(errorText(err), null);
      }
      return;
    }
    if (!isCurrent(gen)) return;
    const cart = data.cart && typeof data.cart === 'object' ? data.cart : {};
    const number = cart.cart_id;
    if (number === undefined || number === null || number === '') {
      showError(() => t('errBadReply'), null);
      return;
    }
    state.cartNumber = number;
    state.expectedReturn = data.expected_return || null;
    state.autoHomeAt = Date.now() + TAKEN_HOME_MS;
    show('taken');
  }

  // ---------------------------------------------------------------- return flow

  async function initiateReturn() {
    const gen = state.gen;
    const phone = state.phone;
    showBusy('busyFinding');
    let data;
    try {
      data = await api('POST', '/carts/initiate-return', { phone });
    } catch (err) {
      if (!isCurrent(gen)) return;
      showEntry('phone', errorText(err));
      return;
    }
    if (!isCurrent(gen)) return;
    const index = Number(data.locker_number);
    if (data.locker_number === null || data.locker_number === undefined || !Number.isInteger(index) || index < 0) {
      showError(() => t('errBadReply'), null);
      return;
    }
    state.returnPost = index + 1; // locker_number is the zero-based post index
    state.dockNote = false;
    show('dock');
    pollReturn(gen, Date.now());
  }

  async function pollReturn(gen, startedAt) {
    await new Promise((resolve) => setTimeout(resolve, RETURN_POLL_MS));
    if (!isCurrent(gen) || state.screen !== 'dock') return;
    if (Date.now() - startedAt > RETURN_GIVE_UP_MS) {
      const post = state.returnPost;
      showError(() => t('dockTimeout', { post }), retryReturn);
      return;
    }
    let data;
    try {
      data = await api('POST', '/carts/complete-return', { phone: state.phone }, { timeout: RETURN_POLL_TIMEOUT_MS });
    } catch (err) {
      if (!isCurrent(gen) || state.screen !== 'dock') return;
      if (err.kind === 'http' && err.status >= 400 && err.status < 500) {
        showError(errorText(err), retryReturn);
        return;
      }
      // Network hiccup or a 5xx: keep trying until the give-up time.
      state.dockNote = true;
      render();
      pollReturn(gen, startedAt);
      return;
    }
    if (!isCurrent(gen) || state.screen !== 'dock') return;
    if (data.returned === true) {
      state.autoHomeAt = Date.now() + RETURNED_HOME_MS;
      show('returned');
      return;
    }
    if (state.dockNote) {
      state.dockNote = false;
      render();
    }
    pollReturn(gen, startedAt);
  }

  function retryReturn() {
    state.gen += 1;
    state.flow = 'return';
    state.mode = 'phone';
    initiateReturn();
  }

  // ---------------------------------------------------------------- input

  function submitEntry() {
    if (state.screen !== 'entry') return;
    if (state.mode === 'phone') {
      if (state.phone.length !== PHONE_DIGITS) {
        state.entryError = t('phoneIncomplete');
        render();
        return;
      }
      if (state.flow === 'return') initiateReturn();
      else requestOtp(true);
    } else {
      if (state.code.length !== CODE_DIGITS) {
        state.entryError = t('codeIncomplete');
        render();
        return;
      }
      verifyOtp();
    }
  }

  function pressKey(key) {
    if (state.screen !== 'entry') return;
    const field = state.mode === 'phone' ? 'phone' : 'code';
    const max = state.mode === 'phone' ? PHONE_DIGITS : CODE_DIGITS;
    const value = state[field];
    if (key === 'back') state[field] = value.slice(0, -1);
    else if (key === 'clear') state[field] = '';
    else if (/^[0-9]$/.test(key) && value.length < max) state[field] = value + key;
    state.entryError = '';
    render();
  }

  function entryCancel() {
    if (state.mode === 'code') {
      state.gen += 1;
      state.code = '';
      showEntry('phone', '');
    } else {
      goHome();
    }
  }

  function toggleLanguage() {
    state.lang = state.lang === 'he' ? 'en' : 'he';
    storageSet(LANG_KEY, state.lang);
    applyLanguage();
  }

  function onClick(event) {
    const target = event.target.closest('button');
    if (!target || target.disabled) return;
    const key = target.dataset.key;
    if (key) {
      pressKey(key);
      return;
    }
    switch (target.dataset.testid) {
      case 'lang-toggle': toggleLanguage(); break;
      case 'take': startFlow('take'); break;
      case 'return': startFlow('return'); break;
      case 'submit': submitEntry(); break;
      case 'cancel': entryCancel(); break;
      case 'resend':
        if (state.mode === 'code' && secondsLeft(state.resendAt) === 0) {
          state.gen += 1;
          requestOtp(false);
        }
        break;
      case 'taken-done':
      case 'returned-done':
      case 'error-back':
      case 'dock-cancel':
        goHome();
        break;
      case 'error-retry':
        if (state.errorRetry) state.errorRetry();
        break;
      default:
        break;
    }
  }

  function onKeyDown(event) {
    noteActivity();
    if (event.ctrlKey || event.altKey || event.metaKey) return;
    if (state.screen === 'entry') {
      if (/^[0-9]$/.test(event.key)) pressKey(event.key);
      else if (event.key === 'Backspace') pressKey('back');
      else if (event.key === 'Delete') pressKey('clear');
      else if (event.key === 'Enter') submitEntry();
      else if (event.key === 'Escape') entryCancel();
      else return;
      event.preventDefault();
    } else if (event.key === 'Escape' && state.screen !== 'busy') {
      goHome();
    }
  }

  function noteActivity() {
    state.lastActivity = Date.now();
  }

  // ---------------------------------------------------------------- timers

  function tick() {
    const now = Date.now();
    switch (state.screen) {
      case 'entry':
      case 'error':
        if (now - state.lastActivity > IDLE_HOME_MS) goHome();
        else if (state.screen === 'entry' && state.mode === 'code') renderEntry();
        break;
      case 'taken':
      case 'returned':
        if (now >= state.autoHomeAt) goHome();
        else render();
        break;
      default:
        break;
    }
  }

  async function pollHealth() {
    try {
      const data = await api('GET', '/health', undefined, { timeout: HEALTH_TIMEOUT_MS });
      state.health = data.hub_connected === true ? 'connected' : 'offline';
      state.lockFault = data.rs485_connected === false;
    } catch (_) {
      state.health = 'unreachable';
      state.lockFault = false;
    }
    renderStatus();
    setTimeout(pollHealth, HEALTH_EVERY_MS);
  }

  // ---------------------------------------------------------------- start

  document.addEventListener('click', onClick);
  document.addEventListener('pointerdown', noteActivity, { passive: true });
  document.addEventListener('keydown', onKeyDown);
  document.addEventListener('contextmenu', (event) => event.preventDefault());
  // A tap anywhere on a result screen (outside its buttons) goes home too.
  for (const name of ['taken', 'returned']) {
    screens[name].addEventListener('click', (event) => {
      if (!event.target.closest('button')) goHome();
    });
  }

  applyLanguage();
  show('home');
  renderStatus();
  pollHealth();
  setInterval(tick, 1000);
})();
