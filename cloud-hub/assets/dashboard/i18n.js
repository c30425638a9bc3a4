// The dashboard's strings in English and Hebrew. t(key, vars) looks the key up in the chosen
// language, falling back to English, then to the key itself.
"use strict";
(function () {
  const en = {
    "nav.chains": "Chains", "nav.branches": "Branches", "nav.devices": "Devices",
    "nav.history": "Rental history", "nav.telemetry": "Telemetry", "nav.audit": "Audit",
    "logout": "Sign out", "login.title": "Sign in", "login.name": "User name",
    "login.password": "Password", "login.submit": "Sign in", "login.failed": "Sign-in failed: {msg}",
    "live.on": "● live", "live.off": "○ not live",
    "chains.title": "Chains", "branches.title": "Branches", "devices.title": "Devices",
    "col.name": "Name", "col.slug": "Slug", "col.active": "Active", "col.code": "Code", "col.city": "City",
    "col.devices": "Devices", "col.online": "Online", "col.offline": "Offline", "col.lag": "Sync lag",
    "col.heartbeat": "Last heartbeat", "col.lastsync": "Last sync", "col.status": "Status",
    "col.firmware": "Firmware", "col.pending": "Pending intents", "col.branch": "Branch",
    "col.cart": "Cart", "col.phone": "Phone", "col.start": "Started", "col.due": "Due",
    "col.returned": "Returned", "col.duration": "Minutes", "col.kind": "Kind", "col.detail": "Detail",
    "col.at": "At", "col.post": "Post", "col.by": "By", "col.outcome": "Outcome", "col.device": "Device",
    "col.event": "Event", "col.data": "Data", "col.actor": "Actor", "col.action": "Action",
    "col.target": "Target", "col.rentals": "Rentals", "col.anomalies": "Open anomalies",
    "yes": "yes", "no": "no", "open": "Open", "none": "—",
    "branch.title": "Branch {name}", "branch.posts": "Posts", "branch.active": "Active rentals",
    "branch.overdue": "Overdue", "branch.returns": "Recent returns", "branch.anomalies": "Anomalies",
    "branch.intents": "Intents", "branch.devices": "Devices", "branch.charts": "Charts",
    "stat.carts": "Posts", "stat.active": "Active rentals", "stat.overdue": "Overdue",
    "stat.today": "Started today", "stat.online": "Devices online",
    "post.available": "latched, cart present", "post.in_use": "open, cart out",
    "post.empty": "empty", "post.reserved": "reserved", "post.maintenance": "maintenance",
    "post.out_of_service": "out of service", "post.fault": "fault", "post.locked": "latched",
    "post.unlocked": "open",
    "act.out_of_service": "Out of service", "act.in_service": "Back in service",
    "act.unlock": "Maintenance unlock", "act.note": "Note", "act.note_prompt": "Note for post {post}:",
    "act.sent": "{kind}: {status}", "act.failed": "Could not send: {msg}",
    "status.pending": "pending", "status.applied": "applied", "status.failed": "failed",
    "status.expired": "expired",
    "chart.per_hour": "Rentals per hour (last 24 h)", "chart.per_day": "Rentals per day",
    "chart.utilisation": "Post utilisation (rentals per post)", "chart.lag": "Sync lag per device (s)",
    "history.title": "Rental history", "filter.branch": "Branch", "filter.since": "Since",
    "filter.until": "Until", "filter.status": "Status", "filter.cart": "Cart number",
    "filter.phone": "Phone", "filter.apply": "Apply", "filter.type": "Event type",
    "telemetry.title": "Telemetry", "audit.title": "Audit log", "empty": "Nothing here.",
    "prev": "Previous", "next": "Next", "page": "Page {page} of {pages}",
    "error": "Error: {msg}", "open_branch": "Open",
  };
  const he = {
    "nav.chains": "רשתות", "nav.branches": "סניפים", "nav.devices": "מכשירים",
    "nav.history": "היסטוריית השכרות", "nav.telemetry": "טלמטריה", "nav.audit": "יומן ביקורת",
    "logout": "התנתקות", "login.title": "כניסה", "login.name": "שם משתמש",
    "login.password": "סיסמה", "login.submit": "כניסה", "login.failed": "הכניסה נכשלה: {msg}",
    "live.on": "● חי", "live.off": "○ לא מחובר",
    "chains.title": "רשתות", "branches.title": "סניפים", "devices.title": "מכשירים",
    "col.name": "שם", "col.slug": "מזהה", "col.active": "פעיל", "col.code": "קוד", "col.city": "עיר",
    "col.devices": "מכשירים", "col.online": "מחוברים", "col.offline": "מנותקים", "col.lag": "פיגור סנכרון",
    "col.heartbeat": "דופק אחרון", "col.lastsync": "סנכרון אחרון", "col.status": "מצב",
    "col.firmware": "קושחה", "col.pending": "פקודות ממתינות", "col.branch": "סניף",
    "col.cart": "עגלה", "col.phone": "טלפון", "col.start": "התחלה", "col.due": "מועד החזרה",
    "col.returned": "הוחזרה", "col.duration": "דקות", "col.kind": "סוג", "col.detail": "פירוט",
    "col.at": "זמן", "col.post": "עמדה", "col.by": "על ידי", "col.outcome": "תוצאה", "col.device": "מכשיר",
    "col.event": "אירוע", "col.data": "נתונים", "col.actor": "מבצע", "col.action": "פעולה",
    "col.target": "יעד", "col.rentals": "השכרות", "col.anomalies": "חריגות פתוחות",
    "yes": "כן", "no": "לא", "open": "פתח", "none": "—",
    "branch.title": "סניף {name}", "branch.posts": "עמדות", "branch.active": "השכרות פעילות",
    "branch.overdue": "באיחור", "branch.returns": "החזרות אחרונות", "branch.anomalies": "חריגות",
    "branch.intents": "פקודות", "branch.devices": "מכשירים", "branch.charts": "גרפים",
    "stat.carts": "עמדות", "stat.active": "השכרות פעילות", "stat.overdue": "באיחור",
    "stat.today": "התחילו היום", "stat.online": "מכשירים מחוברים",
    "post.available": "נעולה, עגלה במקום", "post.in_use": "פתוחה, העגלה בחוץ",
    "post.empty": "ריקה", "post.reserved": "שמורה", "post.maintenance": "תחזוקה",
    "post.out_of_service": "מושבתת", "post.fault": "תקלה", "post.locked": "נעולה",
    "post.unlocked": "פתוחה",
    "act.out_of_service": "השבתה", "act.in_service": "החזרה לשירות",
    "act.unlock": "פתיחה לתחזוקה", "act.note": "הערה", "act.note_prompt": "הערה לעמדה {post}:",
    "act.sent": "{kind}: {status}", "act.failed": "השליחה נכשלה: {msg}",
    "status.pending": "ממתינה", "status.applied": "בוצעה", "status.failed": "נכשלה",
    "status.expired": "פגה",
    "chart.per_hour": "השכרות לשעה (24 שעות)", "chart.per_day": "השכרות ליום",
    "chart.utilisation": "ניצולת עמדות (השכרות לעמדה)", "chart.lag": "פיגור סנכרון לפי מכשיר (שניות)",
    "history.title": "היסטוריית השכרות", "filter.branch": "סניף", "filter.since": "מתאריך",
    "filter.until": "עד תאריך", "filter.status": "מצב", "filter.cart": "מספר עגלה",
    "filter.phone": "טלפון", "filter.apply": "סינון", "filter.type": "סוג אירוע",
    "telemetry.title": "טלמטריה", "audit.title": "יומן ביקורת", "empty": "אין נתונים.",
    "prev": "הקודם", "next": "הבא", "page": "עמוד {page} מתוך {pages}",
    "error": "שגיאה: {msg}", "open_branch": "פתח",
  };
  const dictionaries = { en, he };
  let lang = "en";
  try { lang = localStorage.getItem("cartwise.lang") === "he" ? "he" : "en"; } catch (_) { /* no storage */ }
  window.I18N = {
    get lang() { return lang; },
    set(next) {
      lang = next === "he" ? "he" : "en";
      try { localStorage.setItem("cartwise.lang", lang); } catch (_) { /* no storage */ }
      document.documentElement.lang = lang;
      document.documentElement.dir = lang === "he" ? "rtl" : "ltr";
    },
    t(key, vars) {
      let text = (dictionaries[lang] && dictionaries[lang][key]) || en[key] || key;
      for (const [name, value] of Object.entries(vars || {})) {
        text = text.split("{" + name + "}").join(String(value));
      }
      return text;
    },
  };
})();
