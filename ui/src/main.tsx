// Entry point: the login form until there is a session, then the shell. The theme
// follows the system's preference until the user picks one.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { watchScrollRegions } from "./a11y";
import { currentSession, get, logout, openIdReturn, setLoggedOutHandler } from "./api";
import { Login } from "./views/Login";
import { Shell } from "./views/Shell";
import "./style.css";

const THEME_KEY = "binome.theme";

function initialTheme(): string {
  const saved = localStorage.getItem(THEME_KEY);
  if (saved === "dark" || saved === "light") return saved;
  return window.matchMedia?.("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function App() {
  // back from an OpenID provider: the login form finishes that login, even over a
  // stored session
  const [loggedIn, setLoggedIn] = useState(() => currentSession() !== null
    && openIdReturn() === null);
  const [theme, setTheme] = useState(initialTheme);

  useEffect(() => {
    document.documentElement.dataset.theme = theme;
  }, [theme]);
  useEffect(() => {
    setLoggedOutHandler(() => setLoggedIn(false));
    // a stored session whose ticket expired: the first call answers 401 and logs out
    if (currentSession()) get("/version").catch(() => {});
  }, []);

  const toggleTheme = () => {
    const next = theme === "dark" ? "light" : "dark";
    localStorage.setItem(THEME_KEY, next);
    setTheme(next);
  };
  if (!loggedIn) return <Login onLoggedIn={() => setLoggedIn(true)} />;
  return <Shell theme={theme} onTheme={toggleTheme}
    onLogout={() => { logout(); setLoggedIn(false); }} />;
}

const app = document.getElementById("app")!;
render(<App />, app);
watchScrollRegions(app);
